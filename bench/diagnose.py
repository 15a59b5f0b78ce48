"""Which part of the agent fails on a memory task: the world model's reward prediction, or the actor?

    python -m bench.diagnose RUN [--recipe tmaze_passive_L20] [--sequences 32] [--length 256] [--out d.json]

RUN is a bench.learn run folder (<workdir>/<name>, holding durable/), a run folder of `make submit` (holding
config.yaml) or a durable store itself (then --recipe/--set name its config). Reads a copy of the store (the run
may still be going), restores its newest commit and replay, and runs the world model's posterior over the newest
replayed sequences (each starts at an episode's first step, so the posterior is the one acting had). The task
says which rows are scored, which action pays there and which actions are compared:
  - POPGym RepeatPrevious: every row from the k-th of an episode on; the suit k cards back; all actions.
  - T-Maze: the rows at the junction; the arm the episode's cue points to; the two arms.
At each scored row, from the posterior state of that row:
  (a) the world model: one imagined step with each compared action, the reward head on the result; is the right
      action's predicted reward above every other one's?
  (b) the actor: its probability of the right action, and whether it is the most probable compared one;
  (c) the rewards the run received (ground truth; they also check the right-action labels).
A world model that does not rank the right action first leaves the actor nothing to learn; one that does while
the actor does not points at the actor-critic. The rows are also split by their right action (`by_label`): a world
model whose predicted reward follows the label (the cue) but is the same for every action has learnt the memory
without what it is for.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
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
from agent.envs.tmaze import DOWN, UP
from agent.learner import make_learner, normalize_obs_spec, params_from_bytes
from agent.records import LoopState
from agent.run_config import AgentRunConfig
from agent.train import config_digest, step_schema
from agent.world_model import WorldModel, ac_features
from buffer import Replay


class DiagnoseError(ValueError):
    """A run this diagnostic cannot read (another task, no commit, another config, too short a replay)."""


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


def right_arms(vector: np.ndarray, is_first: np.ndarray, is_last: np.ndarray) -> np.ndarray:
    """vector (T, 4) T-Maze observations [x, y, cue, at junction], is_first, is_last (T,) of one stream -> (T,)
    int: at each row where the agent stands on the junction (and acts), the action into the arm the episode's cue
    pointed to (UP for +1, DOWN for -1); -1 elsewhere. The cue is the episode's first nonzero one (passive: its
    first row; active: the oracle visit); rows before the window's first episode start have no known cue."""
    out = np.full(len(is_first), -1, np.int64)
    cue = 0.0
    for i in range(len(is_first)):
        if is_first[i]:
            cue = float(vector[i, 2]) or np.nan  # nan: started, the cue not shown yet (active)
        elif np.isnan(cue) and vector[i, 2] != 0:
            cue = float(vector[i, 2])
        if cue and not np.isnan(cue) and vector[i, 3] == 1 and vector[i, 1] == 0 and not is_last[i]:
            out[i] = UP if cue > 0 else DOWN
    return out


@dataclass(frozen=True)
class Task:
    """What `diagnose` scores in one env: which rows, which action pays, which actions are compared."""

    name: str
    noun: str  # what the right action is called in the verdict
    candidates: tuple[int, ...]  # the actions compared at a scored row
    labels: Callable[[dict[str, np.ndarray]], np.ndarray]  # one stream's fields (T, ...) -> (T,) int, -1 unscored
    paid: Callable[[np.ndarray], np.ndarray]  # rewards (N,) -> (N,) bool: the right action was taken
    k: int = 0  # RepeatPrevious's k; 0 for other tasks


def task_for(cfg: AgentRunConfig) -> Task:
    if cfg.env.kind == "popgym" and "RepeatPrevious" in cfg.env.id:
        k = int(gymnasium.make(cfg.env.id, disable_env_checker=True).unwrapped.k)
        return Task("repeat_previous", "suit", tuple(range(4)),
                    lambda d: right_actions(d["vector"].argmax(-1), d["is_first"], d["is_last"], k),
                    lambda r: r > 0, k)
    if cfg.env.kind == "tmaze":
        goal = cfg.env.goal_reward
        return Task("tmaze", "arm", (UP, DOWN), lambda d: right_arms(d["vector"], d["is_first"], d["is_last"]),
                    lambda r: r >= goal)
    raise DiagnoseError(f"env {cfg.env.kind}/{cfg.env.id} is neither POPGym RepeatPrevious nor T-Maze")


def _rank(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """scores (N, A), right (N,) -> the right action's rank (1 = first); ties count against it, so a head that
    predicts the same for every action ranks it last, not first by index order."""
    return np.sum(scores >= np.take_along_axis(scores, right[:, None], 1), 1)


@dataclass(frozen=True)
class LabelRow:
    """The scored rows whose right action is `label`; per compared action (in `Diagnosis.candidates` order)."""

    label: int
    rows: int
    wm_reward: tuple[float, ...]  # mean imagined reward of one step with each compared action
    actor_p: tuple[float, ...]  # the actor's mean probability of each compared action

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LabelRow:
        return cls(int(obj["label"]), int(obj["rows"]), tuple(obj["wm_reward"]), tuple(obj["actor_p"]))


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found on one commit; fractions over the scored rows; chance = 1 / len(candidates).
    The fields after `verdict` came later: a JSON without them reads as a RepeatPrevious diagnosis."""

    commit: int
    env_steps: int
    updates: int
    k: int
    num_actions: int
    sequences: int
    length: int
    scored: int  # rows whose action the env scores and whose reward the window holds
    wm_right_reward: float  # mean predicted reward of one imagined step with the right action
    wm_wrong_reward: float  # ... with a wrong compared action, mean over them
    wm_right_first: float  # the right action's predicted reward above every other compared one's
    wm_mean_rank: float
    wm_action_spread: float  # mean (max - min) over the compared actions of the imagined reward: ~0 when it
    # ignores them
    actor_p_right: float  # the actor's mean probability of the right action
    actor_right_first: float  # the right action is the actor's most probable compared one
    actor_mean_rank: float
    actor_entropy: float  # mean entropy (nats) of its action distribution: ln(num_actions) is uniform
    actor_one_action: float  # rows whose most probable compared action is the actor's commonest one: 1.0 when it
    # ignores the state and always plays one action
    actor_agrees_wm: float  # the actor's most probable compared action is the world model's best
    taken_right: float  # the action taken was right (from the rewards received)
    received_reward: float  # mean reward received per scored row
    wm_reward_mae: float  # |reward head on the next posterior state - the reward received| (what the loss trains)
    labels_match_rewards: float  # paid == (taken action == label); 1.0 unless the labels are wrong
    threshold: float  # a fraction of rows "first" from which a part counts as working
    wm_separates: bool
    actor_follows: bool
    verdict: str
    task: str = "repeat_previous"
    candidates: tuple[int, ...] = (0, 1, 2, 3)
    wm_label_spread: float = float("nan")  # mean over the compared actions of (max - min) over the labels of the
    # mean imagined reward: large while wm_action_spread is ~0 when the reward follows the cue, not the action
    by_label: tuple[LabelRow, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["by_label"] = [r.to_json() for r in self.by_label]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Diagnosis:
        missing = [f.name for f in fields(cls) if f.name not in obj and f.default is MISSING]
        if missing:
            raise DiagnoseError(f"a diagnosis JSON lacks {', '.join(missing)}")
        kw = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        if "candidates" in kw:
            kw["candidates"] = tuple(kw["candidates"])
        if "by_label" in kw:
            kw["by_label"] = tuple(LabelRow.from_json(r) for r in kw["by_label"])
        return cls(**kw)


def verdict(wm_ok: bool, actor_ok: bool, noun: str = "suit", label_only: bool = False) -> str:
    if not wm_ok and not actor_ok:
        if label_only:
            return (f"the world model fails: its predicted reward follows the right {noun} but is the same for "
                    f"every action, so imagination gives the actor nothing to learn")
        return (f"the world model fails: its reward head does not tell the right {noun} from the wrong ones, so "
                f"imagination gives the actor nothing to learn")
    if wm_ok and not actor_ok:
        return f"the actor fails: the world model ranks the right {noun} first, the actor does not follow it"
    if wm_ok:
        return f"both work: the world model ranks the right {noun} first and the actor follows it"
    return f"the actor picks the right {noun} without the world model ranking it first (not learnt in imagination)"


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


def _restore(cfg: AgentRunConfig, durable: str, obs_spec) -> tuple[Any, LoopState, list[dict[str, np.ndarray]]]:
    """A copy of `durable` -> (its newest commit, the loop state in it, each stream's whole replay window)."""
    work = Path(tempfile.mkdtemp(prefix="r2i-diagnose-"))
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
    return restored, loop, data


def diagnose(cfg: AgentRunConfig, durable: str, sequences: int = 32, length: int = 256,
             threshold: float | None = None, seed: int = 0) -> Diagnosis:
    """Diagnose the newest commit of `durable` (a copy is read; the store is left as it is) of a run of `cfg`.
    `threshold`: default halfway between chance and 1."""
    task = task_for(cfg)
    if sequences < 1 or length < 2:
        raise DiagnoseError(f"--sequences {sequences} and --length {length} must be >= 1 and >= 2")
    env = VecEnv(cfg.env, 1, seed=0, processes=False)
    try:
        obs_spec, num_actions = env.obs_spec(), env.num_actions
    finally:
        env.close()
    cand = np.array(task.candidates)
    threshold = (1 + 1 / len(cand)) / 2 if threshold is None else threshold
    restored, loop, data = _restore(cfg, durable, obs_spec)
    params = params_from_bytes(make_learner(cfg.agent, obs_spec, num_actions), restored.blobs["agent_state"])
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
            label = task.labels(p)[:-1]
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
    label, pred, logp = r["label"], r["pred"][:, cand], r["logp"]
    at = np.argmax(cand[None, :] == label[:, None], 1)  # the right action's position among the compared ones
    right = np.eye(len(cand), dtype=bool)[at]
    p_cand = np.exp(logp[:, cand])
    wm_rank, actor_rank = _rank(pred, at), _rank(p_cand, at)
    wm_first = float(np.mean(wm_rank == 1))
    actor_first = float(np.mean(actor_rank == 1))
    wm_ok, actor_ok = wm_first >= threshold, actor_first >= threshold
    by_label = tuple(LabelRow(int(v), int(np.sum(label == v)),
                              tuple(float(x) for x in pred[label == v].mean(0)),
                              tuple(float(x) for x in p_cand[label == v].mean(0))) for v in np.unique(label))
    means = np.array([row.wm_reward for row in by_label])  # (labels, candidates)
    action_spread = float((pred.max(-1) - pred.min(-1)).mean())
    label_spread = float((means.max(0) - means.min(0)).mean())
    paid = task.paid(r["reward"])
    return Diagnosis(
        commit=int(restored.commit_id), env_steps=int(loop.env_steps), updates=int(loop.updates), k=task.k,
        num_actions=num_actions, sequences=len(wins), length=length, scored=int(len(label)),
        wm_right_reward=float(pred[right].mean()), wm_wrong_reward=float(pred[~right].mean()),
        wm_right_first=wm_first, wm_mean_rank=float(wm_rank.mean()), wm_action_spread=action_spread,
        actor_p_right=float(p_cand[right].mean()), actor_right_first=actor_first,
        actor_mean_rank=float(actor_rank.mean()),
        actor_entropy=float(-(np.exp(logp) * logp).sum(-1).mean()),
        actor_one_action=float(np.bincount(p_cand.argmax(-1), minlength=len(cand)).max() / len(label)),
        actor_agrees_wm=float(np.mean(p_cand.argmax(-1) == pred.argmax(-1))),
        taken_right=float(np.mean(paid)), received_reward=float(r["reward"].mean()),
        wm_reward_mae=float(np.abs(r["tf"] - r["reward"]).mean()),
        labels_match_rewards=float(np.mean(paid == (r["action"] == label))),
        threshold=float(threshold), wm_separates=bool(wm_ok), actor_follows=bool(actor_ok),
        verdict=verdict(wm_ok, actor_ok, task.noun, label_spread > 2 * action_spread),
        task=task.name, candidates=tuple(int(c) for c in cand), wm_label_spread=label_spread, by_label=by_label)


def _run_config(run: Path, recipe: str, overrides: list[str], seed: int) -> tuple[AgentRunConfig, Path]:
    """RUN -> (its config, its durable store)."""
    if (run / "config.yaml").exists():
        from orchestrator.config import agent_run_config, load_run_config

        return agent_run_config(load_run_config(run / "config.yaml")), run / "durable"
    from bench.learn import RECIPES, compose_exp

    durable = run / "durable" if (run / "durable").is_dir() else run
    return compose_exp(RECIPES[recipe]["exp"], overrides, seed), durable


def main() -> None:
    from bench.learn import RECIPES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder or a durable store")
    ap.add_argument("--recipe", default="popgym_repeat_previous_easy", choices=sorted(RECIPES),
                    help="the bench.learn recipe of a run folder without config.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="the hydra overrides the run had (e.g. train.steps=20000)")
    ap.add_argument("--seed", type=int, default=0, help="the seed of a run folder without config.yaml")
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--length", type=int, default=256,
                    help="rows per sequence (a RepeatPreviousEasy episode has 52, a T-Maze L20 one up to 31)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--out", default="", help="write the diagnosis JSON here")
    args = ap.parse_args()
    run = Path(args.run)
    try:
        cfg, durable = _run_config(run, args.recipe, args.set, args.seed)
        d = diagnose(cfg, str(durable), args.sequences, args.length, args.threshold)
    except DiagnoseError as e:
        raise SystemExit(f"diagnose: {e}") from None
    text = json.dumps(d.to_json(), indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    print(f"wm separates right from wrong: {'yes' if d.wm_separates else 'no'} ({d.wm_right_first:.2f} first, "
          f"chance {1 / len(d.candidates):.2f}; predicted {d.wm_right_reward:.4f} right vs {d.wm_wrong_reward:.4f} "
          f"wrong, {d.wm_action_spread:.4f} apart over the actions, {d.wm_label_spread:.4f} over the right ones); "
          f"actor follows: {'yes' if d.actor_follows else 'no'} "
          f"({d.actor_right_first:.2f} first, p(right) {d.actor_p_right:.2f}); {d.verdict}")
    acts = " ".join(f"{a:>7d}" for a in d.candidates)
    print(f"right action  rows | imagined reward of action {acts} | actor's probability of action {acts}")
    for row in d.by_label:
        print(f"{row.label:12d} {row.rows:5d} | {' ' * 26}{' '.join(f'{x:7.2f}' for x in row.wm_reward)} | "
              f"{' ' * 30}{' '.join(f'{x:7.2f}' for x in row.actor_p)}")


if __name__ == "__main__":
    main()
