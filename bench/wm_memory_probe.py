"""World-model-only training on the replay of a finished T-Maze learning run: does the reward head learn to use
the cue shown ~20 steps earlier?  (The README's T-Maze diagnosis; a quick loop for trying agent settings.)

    python -m bench.wm_memory_probe /tmp/r2i-learn/tmaze_passive_L20 --updates 1500 [--set agent.ssm.dt_max=0.2 ...]

Copies the run's durable store, restores it, trains only the world model on B16 x T64 batches from it, and every
250 updates prints the mean predicted reward at arm entries that paid 10 (right arm) and 0 (wrong arm) on the
last 1024 steps of each stream. A world model that remembers the cue separates the two. The old `tmaze_small`,
which did not (before the memory fixes): --set agent.sample_latents=true agent.ssm.lambda_re=-0.5 agent.ssm.dt_min=0.001
agent.ssm.dt_max=0.1 agent.free_nats=1.0
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agent import nets
from agent.envs import VecEnv
from agent.train import step_schema
from agent.world_model import WorldModel
from bench.learn import RECIPES, compose_exp
from buffer import Replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a bench.learn run folder (<workdir>/<name>) of the tmaze_passive_L20 recipe")
    ap.add_argument("--updates", type=int, default=1500)
    ap.add_argument("--set", nargs="*", default=[], help="agent overrides, e.g. agent.model_opt.lr=3e-3")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="r2i-wm-probe-"))
    shutil.copytree(Path(args.run) / "durable", work / "durable")
    cfg = compose_exp(RECIPES["tmaze_passive_L20"]["exp"], args.set, 0)
    env = VecEnv(cfg.env, cfg.train.num_envs, seed=0, processes=False)
    rep = Replay(step_schema(env.obs_spec()), cfg.train.num_envs, str(work / "scratch"), str(work / "durable"),
                 cfg.replay, batch=16, length=64, seed=1, force_first=True, writer_token=uuid.uuid4().hex)
    if rep.restore() is None:
        raise SystemExit(f"{args.run}/durable holds no commit")
    t_end = rep.info["t"]
    wm = WorldModel(cfg.agent, (("vector", tuple(env.obs_spec()["vector"].shape)),), env.num_actions)
    params = wm.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in rep.sample().items()},
                     jax.random.PRNGKey(1), method=WorldModel.loss)
    opt = optax.chain(optax.clip_by_global_norm(cfg.agent.model_opt.clip), optax.adam(cfg.agent.model_opt.lr))
    ost = opt.init(params)

    @jax.jit
    def step(params, ost, batch, key):
        grads = jax.grad(lambda p: wm.apply(p, batch, key, method=WorldModel.loss)[0])(params)
        upd, ost = opt.update(grads, ost, params)
        return optax.apply_updates(params, upd), ost

    @jax.jit
    def predicted_reward(params, batch):
        post = wm.apply(params, batch, jax.random.PRNGKey(0), method=WorldModel.loss)[1][0]
        return nets.TwoHotSymlog(wm.apply(params, post.deter, post.stoch, method=WorldModel.heads)[0]).mean()

    windows = [(w, s) for w in range(cfg.train.num_envs) for s in range(max(0, t_end - 1024), t_end - 64, 64)]

    def evaluate(params) -> tuple[float, float, int]:
        rows = []
        for w, start in windows:
            d = rep.read(w, start, start + 64)
            pred = np.asarray(predicted_reward(params, {k: jnp.asarray(v[None]) for k, v in d.items()}))[0]
            firsts = np.flatnonzero(d["is_first"])
            for b in firsts[1:]:
                if d["vector"][b - 1, 1] != 0:  # the episode ended in an arm
                    rows.append((d["reward"][b - 1], pred[b - 1]))
        rows = np.array(rows)
        paid = rows[:, 0] > cfg.env.goal_reward / 2
        return float(rows[paid, 1].mean()), float(rows[~paid, 1].mean()), len(rows)

    t0 = time.time()
    for i in range(args.updates + 1):
        if i % 250 == 0:
            right, wrong, n = evaluate(params)
            print(f"update {i}: predicted reward at {n} arm entries: right arm {right:.2f}, wrong arm {wrong:.2f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        params, ost = step(params, ost, {k: jnp.asarray(v) for k, v in rep.sample().items()}, jax.random.PRNGKey(i))
    rep.close()
    env.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
