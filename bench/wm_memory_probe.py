"""World-model-only training on the replay of a finished T-Maze learning run: does the reward head learn to use
the cue shown ~20 steps earlier, and does imagination carry it to the arm the agent picks?

    python -m bench.wm_memory_probe RUN [--seed N] [--updates 3000] [--batch 8] [--init-seed 0] [--from-run]
                                        [--set agent.rep_scale=0.0 ...]

Copies the run's durable store, restores it, trains only the world model on B x T64 batches from it (B8 is the
loop's batch) and every 250 updates prints, on the last 1024 steps of each stream:
  - teacher-forced: the mean predicted reward at arm entries that paid `goal_reward` (right arm) and the others;
  - imagined: from the posterior at the junction, one imagined step into each arm, the reward head on it: the
    right arm's and the wrong arm's mean (what the actor learns from).
A world model that remembers the cue separates both. The update at which the teacher-forced pair first differs by
half the goal reward is printed as "learned at"; --stop-after N ends N updates later. Settings are compared over
--init-seed 0, 1, 2: the update the cue is learned at varies a lot between initialisations.
--from-run starts from the run's own world model instead of a fresh one (with a fresh optimiser): a run whose
world model cannot learn what a fresh one learns from the same replay is stuck, not short of data.
The old `tmaze_small`, which did not learn the cue (before the memory fixes): --set agent.sample_latents=true
agent.ssm.lambda_re=-0.5 agent.ssm.dt_min=0.001 agent.ssm.dt_max=0.1 agent.free_nats=1.0
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
from agent.envs.tmaze import DOWN, UP
from agent.learner import make_learner, params_from_bytes
from agent.train import step_schema
from agent.world_model import WorldModel
from bench.diagnose import right_arms
from bench.learn import RECIPES, compose_exp
from buffer import Replay


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a bench.learn run folder (<workdir>/<name>) of the tmaze_passive_L20 recipe")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (--from-run reads its agent state)")
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--stop-after", type=int, default=-1, help="stop this many updates after the cue is learned")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--init-seed", type=int, default=0, help="the fresh world model's initialisation")
    ap.add_argument("--from-run", action="store_true", help="start from the run's world model")
    ap.add_argument("--set", nargs="*", default=[], help="the run's and the probe's overrides, e.g. agent.rep_scale=0")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="r2i-wm-probe-"))
    shutil.copytree(Path(args.run) / "durable", work / "durable")
    cfg = compose_exp(RECIPES["tmaze_passive_L20"]["exp"], args.set, args.seed)
    env = VecEnv(cfg.env, cfg.train.num_envs, seed=0, processes=False)
    spec, num_actions = env.obs_spec(), env.num_actions
    env.close()
    rep = Replay(step_schema(spec), cfg.train.num_envs, str(work / "scratch"), str(work / "durable"),
                 cfg.replay, batch=args.batch, length=64, seed=1, force_first=True, writer_token=uuid.uuid4().hex)
    restored = rep.restore()
    if restored is None:
        raise SystemExit(f"{args.run}/durable holds no commit")
    t_end = rep.info["t"]
    wm = WorldModel(cfg.agent, (("vector", tuple(spec["vector"].shape)),), num_actions)
    if args.from_run:
        params = params_from_bytes(make_learner(cfg.agent, spec, num_actions), restored.blobs["agent_state"])["wm"]
    else:
        params = wm.init(jax.random.PRNGKey(args.init_seed), {k: jnp.asarray(v) for k, v in rep.sample().items()},
                         jax.random.PRNGKey(1), method=WorldModel.loss)
    opt = optax.chain(optax.clip_by_global_norm(cfg.agent.model_opt.clip), optax.adam(cfg.agent.model_opt.lr))
    ost = opt.init(params)

    @jax.jit
    def step(params, ost, batch, key):
        grads = jax.grad(lambda p: wm.apply(p, batch, key, method=WorldModel.loss)[0])(params)
        upd, ost = opt.update(grads, ost, params)
        return optax.apply_updates(params, upd), ost

    @jax.jit
    def predicted(params, batch):
        """-> (T,) reward head on the posterior, (T, 2) on one imagined step up / down from it."""
        post = wm.apply(params, batch, jax.random.PRNGKey(0), method=WorldModel.loss)[1][0]
        teacher = nets.TwoHotSymlog(wm.apply(params, post.deter, post.stoch, method=WorldModel.heads)[0]).mean()
        flat = jax.tree.map(lambda x: x[0], post)
        arms = []
        for a in (UP, DOWN):
            onehot = jax.nn.one_hot(jnp.full(flat.stoch.shape[:1], a), num_actions)
            nxt = wm.apply(params, flat.hidden, flat.stoch, onehot, jax.random.PRNGKey(1), method=WorldModel.img_step)
            arms.append(nets.TwoHotSymlog(wm.apply(params, nxt.deter, nxt.stoch, method=WorldModel.heads)[0]).mean())
        return teacher[0], jnp.stack(arms, -1)

    windows = [(w, s) for w in range(cfg.train.num_envs) for s in range(max(0, t_end - 1024), t_end - 64, 64)]
    data = [rep.read(w, s, s + 64) for w, s in windows]

    def evaluate(params) -> tuple[float, float, float, float]:
        """-> teacher-forced (right arm, wrong arm), imagined (right arm, wrong arm) mean rewards."""
        paid, unpaid, right, wrong = [], [], [], []
        for d in data:
            teacher, arms = (np.asarray(x) for x in predicted(params, {k: jnp.asarray(v[None]) for k, v in d.items()}))
            for b in np.flatnonzero(d["is_first"])[1:]:
                if d["vector"][b - 1, 1] != 0:  # the episode ended in an arm
                    (paid if d["reward"][b - 1] >= cfg.env.goal_reward else unpaid).append(teacher[b - 1])
            label = right_arms(d["vector"], d["is_first"], d["is_last"])
            for j in np.flatnonzero(label >= 0):
                at = int(label[j] == DOWN)
                right.append(arms[j, at])
                wrong.append(arms[j, 1 - at])
        return tuple(float(np.mean(x)) if x else float("nan") for x in (paid, unpaid, right, wrong))

    t0, learned = time.time(), None
    for i in range(args.updates + 1):
        if i % 250 == 0:
            paid, unpaid, right, wrong = evaluate(params)
            if learned is None and paid - unpaid > cfg.env.goal_reward / 2:
                learned = i
            print(f"update {i}: teacher-forced reward at arm entries: right {paid:.2f}, wrong {unpaid:.2f}; imagined "
                  f"from the junction: right arm {right:.2f}, wrong arm {wrong:.2f} ({time.time() - t0:.0f} s)",
                  flush=True)
            if learned is not None and 0 <= args.stop_after <= i - learned:
                break
        params, ost = step(params, ost, {k: jnp.asarray(v) for k, v in rep.sample().items()}, jax.random.PRNGKey(i))
    print(f"learned at: {learned}" if learned is not None else f"learned at: not within {args.updates} updates")
    rep.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
