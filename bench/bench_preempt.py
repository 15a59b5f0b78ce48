"""What one preemption costs at Memory Maze scale: the commit at the stop, the restore, the recompile, the steps redone.

    python -m bench.bench_preempt [--batch 1 --length 64] [--num-envs 2] [--out bench/results/preempt.json]

Runs the `mmaze9x9` experiment (the `mmaze` agent, ~93M params, Memory Maze envs in worker processes) as a job
would, in three fresh processes that share one durable store:
1. `first`: from nothing to a few updates past prefill, then a stop request: the stop-to-exit time covers the commit
   of everything (agent state, optimiser, replay tail, env snapshots) that a signal's grace must hold.
2. `resume_warm`: a new process, as a requeued job, with the compile cache the first one filled.
3. `resume_cold`: the same with an empty compile cache.
Each child stamps its start, the first stop poll (the loop's first step: restore done, envs back) and the third
(the second step's policy, at policy lag 0, waits for the updates the first dispatched: so it follows the first
train steps and their compile), and the stop-to-exit time. A stop commits everything, so it redoes no steps; a
kill without a signal redoes those since the last periodic commit, `train.commit_every_min` at most. The overhead
at one preemption an hour is (stop commit + start to first update) / 3600 s, the requeue's wait in the queue
excluded.
On CPU the train step runs on `--batch` x `--length` (B4 x T1024 on a GPU node); the state it commits is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T_SPAWN = "R2I_BENCH_T_SPAWN"


def _child(root: str, overrides: list[str], stop_after_polls: int) -> dict:
    t_start = time.time()
    from agent.run_config import RunContext
    from agent.train import train
    from orchestrator.compose import compose_runs
    from orchestrator.config import agent_run_config

    cfg = agent_run_config(compose_runs("mmaze9x9", args=overrides)[0].cfg)
    polls: list[float] = []

    def should_stop() -> bool:
        polls.append(time.time())
        return len(polls) > stop_after_polls

    ctx = RunContext(f"{root}/scratch", f"{root}/durable", f"{root}/logs", f"bench-{os.getpid()}", should_stop)
    outcome = train(cfg, ctx)
    t_end = time.time()
    t_spawn = float(os.environ[T_SPAWN])
    return {"outcome": outcome, "import_s": t_start - t_spawn, "to_first_step_s": polls[0] - t_spawn,
            "to_first_update_s": polls[2] - t_spawn, "stop_to_exit_s": t_end - polls[-1], "polls": len(polls)}


def _spawn(root: Path, overrides: list[str], polls: int, cache: Path, timeout: float) -> dict:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), **{T_SPAWN: repr(time.time())})
    out = subprocess.run([sys.executable, "-m", "bench.bench_preempt", "--child", str(root), "--polls", str(polls),
                          "--overrides", json.dumps(overrides)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _state_bytes(durable: Path) -> dict:
    from buffer import read_latest_commit

    c = read_latest_commit(str(durable))
    return {"agent_state_bytes": len(c.blobs["agent_state"]), "blob_bytes": sum(len(b) for b in c.blobs.values()),
            "commit": c.commit_id}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=1800.0, help="per child process")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "preempt.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--polls", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, json.loads(args.overrides), args.polls)))
        return

    import jax

    from agent.device import device_fingerprint

    # updates start once prefill is over and every stream holds a sequence: both at once, so none pile up
    w = args.num_envs
    prefill = w * args.length
    overrides = [f"train.num_envs={w}", f"train.batch={args.batch}", f"train.length={args.length}",
                 f"train.prefill={prefill}", "train.steps=100000000", "train.commit_every_min=1000",
                 "train.log_every=64", "eval.every=0", "wandb.mode=disabled", "replay.capacity=100000",
                 "replay.chunk=256", "replay.inner=64"]
    # the first run stops a few steps past prefill (ratio 64: B * T / 64 updates a step); each resume after two
    first_polls = args.length + 4
    res: dict = {"device": device_fingerprint().to_json(), "jax": jax.__version__, "overrides": overrides}
    work = Path(tempfile.mkdtemp(prefix="r2i-bench-preempt-"))
    try:
        root, cache = work / "run", work / "cache"
        root.mkdir()
        for name, polls, cached in (("first", first_polls, True), ("resume_warm", 3, True),
                                    ("resume_cold", 3, False)):
            if not cached:
                shutil.rmtree(cache, ignore_errors=True)
            res[name] = _spawn(root, overrides, polls, cache, args.timeout_s)
            res[name].update(_state_bytes(root / "durable"))
            print(name, json.dumps(res[name]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stop = res["first"]["stop_to_exit_s"]
    for name in ("resume_warm", "resume_cold"):
        res[f"overhead_per_hour_{name}"] = (stop + res[name]["to_first_update_s"]) / 3600.0
    res["stop_commit_fits_60s_grace"] = stop <= 60.0
    res["target"] = "<= 1 % of wall time at one preemption an hour; the stop commit within a 60 s grace"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
