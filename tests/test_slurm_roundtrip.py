"""First real Slurm round trip: submitit job -> USR2 -> checkpoint -> requeue -> resumed -> finished.

This is the mechanism the orchestrator builds on; it runs on the dev cluster (`make test-slurm`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import submitit

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

REPO = Path(__file__).resolve().parents[1]


class Counter(submitit.helpers.Checkpointable):
    """Counts to `target` at 4 steps/s; progress lives in a file, as resume state must (never in the pickle)."""

    def __init__(self, state_file: str, target: int) -> None:
        self.state_file = state_file
        self.target = target

    def __call__(self) -> dict:
        path = Path(self.state_file)
        state = json.loads(path.read_text()) if path.exists() else {"count": 0, "starts": []}
        state["starts"].append(int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        while state["count"] < self.target:
            time.sleep(0.25)
            state["count"] += 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(path)
        return state


def _sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    return [s.split()[0] for s in out.stdout.split()] if out.returncode == 0 else []


def test_requeue_signal_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sbatch exports the submitting environment: the job imports this module from the repo.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="low", cpus_per_task=1, slurm_signal_delay_s=15)
    state_file = tmp_path / "counter.json"
    job = executor.submit(Counter(str(state_file), target=60))

    deadline = time.monotonic() + 120
    while not (state_file.exists() and json.loads(state_file.read_text())["count"] >= 8):
        assert time.monotonic() < deadline, f"job {job.job_id} never made progress: {job.state}"
        time.sleep(0.5)
    job._interrupt()  # scancel --signal USR2: the same signal as --signal before the time limit

    result = job.result()  # waits through the requeue (~12 s) and the second run
    assert result["count"] == 60
    assert result["starts"][0] == 0 and result["starts"][-1] >= 1, result["starts"]
    # slurmdbd records the end a few seconds after the result file appears.
    deadline = time.monotonic() + 30
    while (states := _sacct_states(job.job_id))[-1:] != ["COMPLETED"] and time.monotonic() < deadline:
        time.sleep(1)
    assert "REQUEUED" in states and states[-1] == "COMPLETED", states
