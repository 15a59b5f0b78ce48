"""Which part of the agent fails on POPGym RepeatPrevious: the world model's reward prediction, or the actor?

    python -m bench.popgym_diagnose /tmp/r2i-learn/popgym_repeat_previous_easy [--sequences 32] [--out d.json]

RUN is a bench.learn run folder (<workdir>/<name>, holding durable/), a run folder of `make submit` (holding
config.yaml) or a durable store itself (then --recipe/--set name its config). Reads a copy of the store (the run
may still be going), restores its newest commit and replay, and runs the world model's posterior over the newest
replayed sequences (each starts at an episode's first step, so the posterior is the one acting had). At each row
whose action the env scores, from the posterior state of that row:
  (a) the world model: one imagined step with each action, the reward head on the result; is the right action's
      predicted reward above every wrong one's?
  (b) the actor: its probability of the right action, and whether it is the most probable one;
  (c) the rewards the run received (ground truth; they also check the right-action labels).
A world model that does not rank the right action first leaves the actor nothing to learn; one that does while
the actor does not points at the actor-critic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import popgym  # noqa: F401  (registers the ids)

from agent import nets
from agent.actor_critic import Actor
from agent.envs import VecEnv
from agent.learner import make_learner, normalize_obs_spec
from agent.records import LoopState
from agent.run_config import AgentRunConfig
from agent.train import config_digest, step_schema
from agent.world_model import WorldModel, ac_features
from buffer import Replay


class DiagnoseError(ValueError):
    """A run this diagnostic cannot read (not RepeatPrevious, no commit, another config, too short a replay)."""


def right_actions(suit: np.ndarray, is_first: np.ndarray, is_last: np.ndarray, k: int) -> np.ndarray:
    """suit, is_first, is_last (T,) of one stream -> (T,) int: the action that pays at each row, -1 where the env
    scores none. popgym's RepeatPrevious scores the action taken at an episode's row j (its hand then holds j + 1
    cards) once j + 1 >= k, against the card k back in the hand: the suit shown at row j - k + 1. No action is
    taken at an episode's last row; rows before the window's first episode start have no known row index."""
    out = np.full(len(suit), -1, np.int64)
    start = None
    for i in range(len(suit)):
        if is_first[i]:
            start = i
        if start is not None and i - start >= k - 1 and not is_last[i]:
            out[i] = suit[i - k + 1]
    return out


def _rank(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """scores (N, A), right (N,) -> the right action's rank (1 = first); ties count against it, so a head that
    predicts the same for every action ranks it last, not first by index order."""
    return np.sum(scores >= np.take_along_axis(scores, right[:, None], 1), 1)


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found on one commit; fractions over the scored rows; chance = 1 / num_actions."""

    commit: int
    env_steps: int
    updates: int
    k: int
    num_actions: int
    sequences: int
    length: int
    scored: int  # rows whose action the env scores and whose reward the window holds
    wm_right_reward: float  # mean predicted reward of one imagined step with the right action
    wm_wrong_reward: float  # ... with a wrong action, mean over the wrong ones
    wm_right_first: float  # the right action's predicted reward above every wrong one's
    wm_mean_rank: float
    wm_action_spread: float  # mean (max - min) over the actions of the imagined reward: ~0 when it ignores them
    actor_p_right: float  # the actor's mean probability of the right action
    actor_right_first: float  # the right action is the actor's most probable one
    actor_mean_rank: float
    actor_entropy: float  # mean entropy (nats) of its action distribution: ln(num_actions) is uniform
    actor_one_action: float  # rows whose most probable action is the actor's commonest one: 1.0 when it ignores
    # the state and always plays one action
    actor_agrees_wm: float  # the actor's most probable action is the world model's best
    taken_right: float  # the action taken was right (from the rewards received)
    received_reward: float  # mean reward received per scored row
    wm_reward_mae: float  # |reward head on the next posterior state - the reward received| (what the loss trains)
    labels_match_rewards: float  # (reward > 0) == (taken action == label); 1.0 unless the labels are wrong
    threshold: float  # a fraction of rows "first" from which a part counts as working
    wm_separates: bool
    actor_follows: bool
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Diagnosis:
        missing = [f.name for f in fields(cls) if f.name not in obj]
        if missing:
            raise DiagnoseError(f"a diagnosis JSON lacks {', '.join(missing)}")
        return cls(**{f.name: obj[f.name] for f in fields(cls)})


def verdict(wm_ok: bool, actor_ok: bool) -> str:
    if not wm_ok and not actor_ok:
        return ("the world model fails: its reward head does not tell the right suit from the wrong ones, so "
                "imagination gives the actor nothing to learn")
    if wm_ok and not actor_ok:
        return "the actor fails: the world model ranks the right suit first, the actor does not follow it"
    if wm_ok:
        return "both work: the world model ranks the right suit first and the actor follows it"
    return "the actor picks the right suit without the world model ranking it first (not learnt in imagination)"


def _windows(data: list[dict[str, np.ndarray]], sequences: int, length: int) -> list[tuple[int, int]]:
    """The newest `sequences` non-overlapping (stream, start) windows of `length` rows that start an episode."""
    found = []
    for w, d in enumerate(data):
        end = len(d["is_first"])
        for s in np.flatnonzero(d["is_first"])[::-1].tolist():
            if s + length <= end:
                found.append((s, w))
                end = s
    found.sort(key=lambda sw: (-sw[0], sw[1]))
    return [(w, s) for s, w in found[:sequences]]


def _evaluator(cfg: AgentRunConfig, obs_spec, num_actions: int):
    wm = WorldModel(cfg.agent, normalize_obs_spec(obs_spec), num_actions)
    actor = Actor(cfg.agent, num_actions)

    @jax.jit
    def run(params, batch, key):
        """-> imagined reward (B, T, A), actor log-probs (B, T, A), reward head on the posterior (B, T)."""
        k_post, k_img = jax.random.split(key)
        post = wm.apply(params["wm"], batch, k_post, method=WorldModel.loss)[1][0]
        bsz, length = batch["is_first"].shape
        flat = jax.tree.map(lambda x: x.reshape((bsz * length, *x.shape[2:])), post)

        def imagined(a):  # the same key for every action: they differ only by the action
            onehot = jax.nn.one_hot(jnp.full((bsz * length,), a), num_actions)
            nxt = wm.apply(params["wm"], flat.hidden, flat.stoch, onehot, k_img, method=WorldModel.img_step)
            return nets.TwoHotSymlog(wm.apply(params["wm"], nxt.deter, nxt.stoch, method=WorldModel.heads)[0]).mean()

        pred = jnp.stack([imagined(a) for a in range(num_actions)], -1).reshape((bsz, length, num_actions))
        logp = actor.apply(params["actor"], ac_features(post, cfg.agent.ac_deter))
        tf = nets.TwoHotSymlog(wm.apply(params["wm"], post.deter, post.stoch, method=WorldModel.heads)[0]).mean()
        return pred, logp, tf

    return run


def diagnose(cfg: AgentRunConfig, durable: str, sequences: int = 32, length: int = 256,
             threshold: float | None = None, seed: int = 0) -> Diagnosis:
    """Diagnose the newest commit of `durable` (a copy is read; the store is left as it is) of a run of `cfg`.
    `threshold`: default halfway between chance and 1."""
    if cfg.env.kind != "popgym" or "RepeatPrevious" not in cfg.env.id:
        raise DiagnoseError(f"env {cfg.env.kind}/{cfg.env.id} is not POPGym RepeatPrevious")
    if sequences < 1 or length < 2:
        raise DiagnoseError(f"--sequences {sequences} and --length {length} must be >= 1 and >= 2")
    env = VecEnv(cfg.env, 1, seed=0, processes=False)
    try:
        obs_spec, num_actions = env.obs_spec(), env.num_actions
    finally:
        env.close()
    k = int(gymnasium.make(cfg.env.id, disable_env_checker=True).unwrapped.k)
    threshold = (1 + 1 / num_actions) / 2 if threshold is None else threshold
    work = Path(tempfile.mkdtemp(prefix="r2i-popgym-diag-"))
    try:
        if not Path(durable).is_dir():
            raise DiagnoseError(f"{durable} is not a durable store folder")
        shutil.copytree(durable, work / "durable")
        with Replay(step_schema(obs_spec), cfg.train.num_envs, str(work / "scratch"), str(work / "durable"),
                    cfg.replay, batch=1, length=1, writer_token=uuid.uuid4().hex) as rep:
            restored = rep.restore()
            if restored is None:
                raise DiagnoseError(f"{durable} holds no commit")
            lo, t = rep.info["lo"], rep.info["t"]
            data = [rep.read(w, lo, t) for w in range(cfg.train.num_envs)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop = LoopState.from_json(restored.extra.get("loop"))
    if loop.config_digest not in (config_digest(cfg), config_digest(cfg, legacy=True)):
        raise DiagnoseError(f"the newest commit of {durable} was made with another config (digest "
                            f"{loop.config_digest} != {config_digest(cfg)}): pass the run's --recipe/--set")
    learner = make_learner(cfg.agent, obs_spec, num_actions)
    template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    params = jax.tree.map(jnp.asarray, learner.state_from_bytes(template, restored.blobs["agent_state"]).params)
    wins = _windows(data, sequences, length)
    if not wins:
        raise DiagnoseError(f"no stream of {durable} holds an episode start with {length} rows after it: "
                            f"lower --length")
    run = _evaluator(cfg, obs_spec, num_actions)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in ("label", "pred", "logp", "tf", "action", "reward")}
    for b in range(0, len(wins), 8):  # 8 sequences a call bounds the memory of the A imagined steps
        part = [{f: v[s:s + length] for f, v in data[w].items()} for w, s in wins[b:b + 8]]
        batch = {f: jnp.asarray(np.stack([p[f] for p in part])) for f in part[0]}
        pred, logp, tf = (np.asarray(x) for x in run(params, batch, jax.random.PRNGKey(seed)))
        for i, p in enumerate(part):
            label = right_actions(p["vector"].argmax(-1), p["is_first"], p["is_last"], k)[:-1]
            keep = label >= 0  # and the next row, which holds its reward, is in the window ([:-1])
            rows["label"].append(label[keep])
            rows["pred"].append(pred[i, :-1][keep])
            rows["logp"].append(logp[i, :-1][keep])
            rows["tf"].append(tf[i, 1:][keep])
            rows["action"].append(p["action"][:-1][keep])
            rows["reward"].append(p["reward"][1:][keep])
    r = {n: np.concatenate(v) for n, v in rows.items()}
    if not len(r["label"]):
        raise DiagnoseError(f"the {len(wins)} windows of {length} rows hold no scored row: raise --length")
    label, pred, logp = r["label"], r["pred"], r["logp"]
    right = np.eye(num_actions, dtype=bool)[label]
    wm_rank, actor_rank = _rank(pred, label), _rank(logp, label)
    wm_first = float(np.mean(wm_rank == 1))
    actor_first = float(np.mean(actor_rank == 1))
    wm_ok, actor_ok = wm_first >= threshold, actor_first >= threshold
    return Diagnosis(
        commit=int(restored.commit_id), env_steps=int(loop.env_steps), updates=int(loop.updates), k=k,
        num_actions=num_actions, sequences=len(wins), length=length, scored=int(len(label)),
        wm_right_reward=float(pred[right].mean()), wm_wrong_reward=float(pred[~right].mean()),
        wm_right_first=wm_first, wm_mean_rank=float(wm_rank.mean()),
        wm_action_spread=float((pred.max(-1) - pred.min(-1)).mean()),
        actor_p_right=float(np.exp(logp[right]).mean()), actor_right_first=actor_first,
        actor_mean_rank=float(actor_rank.mean()),
        actor_entropy=float(-(np.exp(logp) * logp).sum(-1).mean()),
        actor_one_action=float(np.bincount(logp.argmax(-1), minlength=num_actions).max() / len(label)),
        actor_agrees_wm=float(np.mean(logp.argmax(-1) == pred.argmax(-1))),
        taken_right=float(np.mean(r["reward"] > 0)), received_reward=float(r["reward"].mean()),
        wm_reward_mae=float(np.abs(r["tf"] - r["reward"]).mean()),
        labels_match_rewards=float(np.mean((r["reward"] > 0) == (r["action"] == label))),
        threshold=float(threshold), wm_separates=bool(wm_ok), actor_follows=bool(actor_ok),
        verdict=verdict(wm_ok, actor_ok))


def _run_config(run: Path, recipe: str, overrides: list[str]) -> tuple[AgentRunConfig, Path]:
    """RUN -> (its config, its durable store)."""
    if (run / "config.yaml").exists():
        from orchestrator.config import agent_run_config, load_run_config

        return agent_run_config(load_run_config(run / "config.yaml")), run / "durable"
    from bench.learn import RECIPES, compose_exp

    durable = run / "durable" if (run / "durable").is_dir() else run
    return compose_exp(RECIPES[recipe]["exp"], overrides, 0), durable


def main() -> None:
    from bench.learn import RECIPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder or a durable store")
    ap.add_argument("--recipe", default="popgym_repeat_previous_easy", choices=sorted(RECIPES),
                    help="the bench.learn recipe of a run folder without config.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="the hydra overrides the run had (e.g. train.steps=20000)")
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--length", type=int, default=256, help="rows per sequence (an Easy episode has 52)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--out", default="", help="write the diagnosis JSON here")
    args = ap.parse_args()
    run = Path(args.run)
    try:
        cfg, durable = _run_config(run, args.recipe, args.set)
        d = diagnose(cfg, str(durable), args.sequences, args.length, args.threshold)
    except DiagnoseError as e:
        raise SystemExit(f"popgym_diagnose: {e}") from None
    text = json.dumps(d.to_json(), indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    print(f"wm separates right from wrong: {'yes' if d.wm_separates else 'no'} ({d.wm_right_first:.2f} first, "
          f"chance {1 / d.num_actions:.2f}; predicted {d.wm_right_reward:.4f} right vs {d.wm_wrong_reward:.4f} "
          f"wrong, {d.wm_action_spread:.4f} apart over the actions); "
          f"actor follows: {'yes' if d.actor_follows else 'no'} "
          f"({d.actor_right_first:.2f} first, p(right) {d.actor_p_right:.2f}); {d.verdict}")


if __name__ == "__main__":
    main()
