"""A small real workload that drives the job lifecycle end to end (`run.entry=` WORKLOAD below).

An epsilon-greedy learner on a 2-armed Gaussian bandit: every env step draws from a committed numpy generator,
updates the learner, appends the step to the real replay buffer, and writes a metrics row every
`train.log_every` steps. It polls `should_stop` at every step boundary and commits (replay + learner blob +
progress extra) every `train.commit_every_min` minutes, on a stop and at the end; an interrupted, resumed
run ends in exactly the state of an uninterrupted one. Pace: `R2I_TEST_STEP_S` s of sleep per step (0.02).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.records import CommitExtra, Progress
from buffer import CorruptChunkError, FieldSpec, NoRestorableCommitError, Replay, WriterFencedError

WORKLOAD = "tests.orchestrator.orch_workload:train"  # jobs import it with the checkout on PYTHONPATH
ARM_MEANS = (0.2, 0.8)
EPISODE = 10  # steps per bandit "episode"; its return is the sum of rewards
EPSILON = 0.1


def _fresh(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"q": [0.0, 0.0], "n": [0, 0], "steps": 0, "episodes": 0, "ep_return": 0.0, "last_return": None,
            "rng": rng.bit_generator.state}


def _step(s: dict[str, Any], rng: np.random.Generator) -> tuple[int, float]:
    explore = rng.random() < EPSILON
    arm = int(rng.integers(2)) if explore else int(np.argmax(s["q"]))
    reward = float(rng.normal(ARM_MEANS[arm], 1.0))
    s["n"][arm] += 1
    s["q"][arm] += (reward - s["q"][arm]) / s["n"][arm]
    s["steps"] += 1
    s["ep_return"] += reward
    if s["steps"] % EPISODE == 0:
        s["episodes"] += 1
        s["last_return"], s["ep_return"] = s["ep_return"], 0.0
    return arm, reward


class _ReplayStore:
    """The real two-tier replay: steps go in, learner state rides along as a blob of the same commit."""

    def __init__(self, cfg: Any, ctx: Any) -> None:
        schema = {"action": FieldSpec((), "int32"), "reward": FieldSpec((), "float32")}
        self.replay = Replay(schema, 1, ctx.scratch_dir, ctx.durable_url, cfg.replay, batch=1, length=4,
                             seed=cfg.seed, writer_token=ctx.writer_token)

    def restore(self) -> tuple[dict, dict] | None:
        r = self.replay.restore()
        return None if r is None else (r.extra, json.loads(r.blobs["learner"]))

    def add(self, arm: int, reward: float) -> None:
        self.replay.add({"action": np.array([arm], np.int32), "reward": np.array([reward], np.float32)})

    def commit(self, extra: dict, learner: dict) -> None:
        self.replay.commit(extra, {"learner": json.dumps(learner).encode()})

    def close(self) -> None:
        self.replay.close()


def train(cfg: Any, ctx: Any) -> str:
    """Run the bandit learner to `cfg.train.steps` env steps; "done", or "stopped" after a commit."""
    step_s = float(os.environ.get("R2I_TEST_STEP_S", "0.02"))
    store = _ReplayStore(cfg, ctx)
    restored = store.restore()
    s = restored[1] if restored else _fresh(cfg.seed)
    wandb_id = CommitExtra.from_json(restored[0]).wandb_run_id if restored else f"bandit-{cfg.seed}-{os.getpid()}"
    rng = np.random.default_rng()
    rng.bit_generator.state = s["rng"]
    target = cfg.train.steps
    t0, steps0, last_commit = time.time(), s["steps"], time.time()
    metrics = open(Path(ctx.log_dir) / "metrics.jsonl", "a")

    def commit() -> None:
        s["rng"] = rng.bit_generator.state
        rate = (s["steps"] - steps0) / max(time.time() - t0, 1e-9)
        progress = Progress(env_steps=s["steps"], target_steps=target, updates=s["steps"], episodes=s["episodes"],
                            last_return=s["last_return"], wall_time_s=time.time() - t0, steps_per_s=rate)
        store.commit(CommitExtra(progress, wandb_id).to_json(), s)

    try:
        while s["steps"] < target:
            if ctx.should_stop():
                commit()
                return "stopped"
            arm, reward = _step(s, rng)
            store.add(arm, reward)
            if s["steps"] % cfg.train.log_every == 0:
                metrics.write(json.dumps({"env_steps": s["steps"], "episode/return": s["last_return"],
                                          "time": time.time()}) + "\n")
                metrics.flush()
            if time.time() - last_commit >= cfg.train.commit_every_min * 60:
                commit()
                last_commit = time.time()
            time.sleep(step_s)
        commit()
        (Path(ctx.log_dir) / "final_learner.json").write_text(json.dumps(s))  # what the tests compare
        return "done"
    finally:
        metrics.close()
        store.close()


def final_learner(cfg_seed: int, steps: int) -> dict[str, Any]:
    """The learner state after `steps` uninterrupted steps (what any resumed run must end with)."""
    s = _fresh(cfg_seed)
    rng = np.random.default_rng()
    rng.bit_generator.state = s["rng"]
    for _ in range(steps):
        _step(s, rng)
    s["rng"] = rng.bit_generator.state
    return s


CORRUPT = "tests.orchestrator.orch_workload:corrupt_chunk"
FENCED_AFTER_CORRUPT = "tests.orchestrator.orch_workload:fenced_after_corrupt_chunk"
NO_FALLBACK = "tests.orchestrator.orch_workload:no_restorable_commit"


def corrupt_chunk(cfg: Any, ctx: Any) -> str:
    """An entry whose replay finds a corrupt durable chunk, as a lazy fetch would."""
    raise CorruptChunkError("durable chunk chunks/0/0000000003-0badc0de.bin referenced by manifest "
                            "manifests/0000000002-000001.json failed its checksum twice",
                            key="chunks/0/0000000003-0badc0de.bin", manifest="manifests/0000000002-000001.json")


def fenced_after_corrupt_chunk(cfg: Any, ctx: Any) -> str:
    """The same, but closing the replay then finds that a newer copy of the job fenced this one."""
    try:
        return corrupt_chunk(cfg, ctx)
    except CorruptChunkError as e:
        raise WriterFencedError(f"writer {ctx.writer_token!r} was fenced while closing") from e


def no_restorable_commit(cfg: Any, ctx: Any) -> str:
    """A restore that finds every commit referencing a quarantined chunk, chained to a CorruptChunkError (which
    alone would ask for a requeue)."""
    try:
        return corrupt_chunk(cfg, ctx)
    except CorruptChunkError as e:
        raise NoRestorableCommitError("none of the 2 commits can be restored",
                                      keys=("chunks/0/0000000003-0badc0de.bin",)) from e
