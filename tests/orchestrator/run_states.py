"""Run states as the job writes them, for tests that need a run at some point of its life without running it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.run_state import Attempt, RunState, write_run_state

DEVICE = {"machine": "x86_64", "cpu": "Test CPU", "cpus": 2, "gpus": ""}


def attempt(job_id: str, restart: int = 0, **changes: Any) -> Attempt:
    """An attempt's start record (cluster, host, pid, device and start made up) with `changes`."""
    start = {"cluster": "slurm", "host": "node1", "pid": 4242, "device": DEVICE, "start": 1.0}
    return Attempt(job_id=job_id, restart=restart, **{**start, **changes})


def write_state(run_dir: Path, state: str, *attempts: Attempt, **changes: Any) -> RunState:
    """`run_dir/state.json` holding `state` with `attempts` (the last one's job id and restart on top)."""
    last = attempts[-1] if attempts else None
    record = RunState(state=state, updated=time.time(), attempts=attempts, job_id=last and last.job_id,
                      restart=last and last.restart, **changes)
    write_run_state(Path(run_dir) / "state.json", record)
    return record
