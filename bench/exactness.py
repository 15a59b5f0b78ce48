"""Exactness on the hardware at hand: the same bits from two processes, and a stop/resume that changes no bit.

    python -m bench.exactness [--preset tiny] [--batch 2 --length 16 --updates 3] [--loop-steps 600]
                              [--out bench/results/exactness.json]

A requeued job is a new process, and XLA may choose other kernels in another process (GPU autotuning of
convolutions, scatter-add order), so "resumes exactly" needs both parts here to hold on the machine kind a run
uses, with the settings a job uses (`orchestrator.job.pin_xla_flags`, a shared compile cache):
- `processes`: two fresh processes each build the preset's learner from the same key and run `--updates` train
  steps on the same synthetic image batches; the train state and metrics must hash the same.
- `resume`: the training loop on Memory Maze 9x9 (in-process envs, the preset's agent) run straight, and stopped
  after half its steps and resumed in a new process; `orchestrator.verify` fingerprints of the two durable stores
  (every blob, the whole replay, the counters, metrics.jsonl) must be equal.
On a GPU machine run it with `--preset mmaze --batch 4 --length 1024` (the compile takes ~85 s per process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child_updates(preset: str, batch: int, length: int, updates: int) -> dict:
    import jax
    import numpy as np
    from omegaconf import OmegaConf

    from agent.config import agent_config_from
    from agent.learner import jit_train_step, make_learner

    cfg = agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / f"{preset}.yaml"))
    learner = make_learner(cfg, {"image": (64, 64, 3)}, 6)
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    step = jit_train_step(learner, donate=True)
    rng = np.random.default_rng(0)
    metrics_hash = hashlib.sha256()
    t0 = time.perf_counter()
    for i in range(updates):
        first = rng.random((batch, length)) < 0.02
        b = {"image": rng.integers(0, 256, (batch, length, 64, 64, 3), dtype=np.uint8),
             "action": rng.integers(0, 6, (batch, length)).astype(np.int32),
             "reward": (rng.random((batch, length)) < 0.05).astype(np.float32),
             "is_first": first, "is_last": np.roll(first, -1, 1), "is_terminal": np.zeros((batch, length), bool)}
        state, m = step(state, b, jax.random.PRNGKey(100 + i))
        for k in sorted(m):
            metrics_hash.update(np.asarray(jax.device_get(m[k])).tobytes())
    return {"state_sha256": hashlib.sha256(learner.state_to_bytes(state)).hexdigest(),
            "metrics_sha256": metrics_hash.hexdigest(), "seconds": time.perf_counter() - t0}


def _child_loop(preset: str, root: str, steps: int, stop_after: int | None) -> dict:
    from agent.run_config import RunContext
    from agent.train import train
    from orchestrator.compose import compose_runs
    from orchestrator.config import agent_run_config

    spec = compose_runs("mmaze9x9", args=[
        f"agent={preset}", f"train.steps={steps}", "train.num_envs=2", "train.env_processes=false",
        "train.prefill=64", "train.batch=2", "train.length=16", "train.train_ratio=16", "train.log_every=32",
        "train.commit_every_min=1000", "replay.capacity=10000", "replay.chunk=64", "replay.inner=16",
        "replay.fsync=false", "wandb.mode=disabled", "eval.every=0"])[0]
    calls = iter(range(10**9))
    ctx = RunContext(f"{root}/scratch-{os.getpid()}", f"{root}/durable", f"{root}/logs", f"t{os.getpid()}",
                     lambda: stop_after is not None and next(calls) >= stop_after)
    return {"outcome": train(agent_run_config(spec.cfg), ctx)}


def _spawn(args: list[str], timeout: float) -> dict:
    env = dict(os.environ)
    from orchestrator.job import pin_xla_flags

    env["XLA_FLAGS"] = pin_xla_flags(env.get("XLA_FLAGS", ""))
    out = subprocess.run([sys.executable, "-m", "bench.exactness", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def processes(preset: str, batch: int, length: int, updates: int, timeout: float) -> dict:
    args = ["--child", "updates", "--preset", preset, "--batch", str(batch), "--length", str(length),
            "--updates", str(updates)]
    runs = [_spawn(args, timeout) for _ in range(2)]
    same = all(runs[0][k] == runs[1][k] for k in ("state_sha256", "metrics_sha256"))
    return {"preset": preset, "batch": batch, "length": length, "updates": updates, "runs": runs,
            "bit_identical": same}


def resume(preset: str, steps: int, timeout: float) -> dict:
    from orchestrator.verify import differences, fingerprint

    with tempfile.TemporaryDirectory(prefix="r2i-exactness-") as tmp:
        straight, cut = Path(tmp, "straight"), Path(tmp, "cut")
        for d in (straight, cut):
            d.mkdir()
        common = ["--preset", preset, "--loop-steps", str(steps)]
        first = _spawn(["--child", "loop", "--root", str(straight), *common], timeout)
        stopped = _spawn(["--child", "loop", "--root", str(cut), "--stop-after", str(steps // 4), *common], timeout)
        resumed = _spawn(["--child", "loop", "--root", str(cut), *common], timeout)
        a = fingerprint(str(straight / "durable"), straight / "logs" / "metrics.jsonl")
        b = fingerprint(str(cut / "durable"), cut / "logs" / "metrics.jsonl")
        diff = differences(a, b)
    return {"preset": preset, "env_steps": steps, "outcomes": [first["outcome"], stopped["outcome"],
                                                               resumed["outcome"]],
            "differences": diff, "bit_identical": not diff and stopped["outcome"] == "stopped"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="agent preset (experiments/agent/<name>.yaml)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=16)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--loop-steps", type=int, default=600)
    ap.add_argument("--parts", default="processes,resume")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per child process")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "exactness.json"))
    ap.add_argument("--child", choices=["updates", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "updates":
        print(json.dumps(_child_updates(args.preset, args.batch, args.length, args.updates)))
        return
    if args.child == "loop":
        print(json.dumps(_child_loop(args.preset, args.root, args.loop_steps, args.stop_after)))
        return
    import jax

    from agent.device import device_fingerprint

    res: dict = {"device": device_fingerprint().to_json(), "jax": jax.__version__,
                 "xla_flags": os.environ.get("XLA_FLAGS", "")}
    parts = args.parts.split(",")
    if "processes" in parts:
        res["processes"] = processes(args.preset, args.batch, args.length, args.updates, args.timeout_s)
        print("processes", json.dumps(res["processes"]), flush=True)
    if "resume" in parts:
        res["resume"] = resume(args.preset, args.loop_steps, args.timeout_s)
        print("resume", json.dumps(res["resume"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
