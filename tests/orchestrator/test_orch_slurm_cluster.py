"""Real Slurm (the dev cluster, `make test-slurm`): time limit, preemption, external requeue, a killed step,
each ending DONE with exactly the learner state of an uninterrupted run; status is checked throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from orchestrator import launch
from orchestrator.run_state import RunState, read_run_state
from orchestrator.status import latest_commit, sweep_status
from orchestrator.sweep import Sweep
from tests.orchestrator.orch_workload import WORKLOAD, final_learner

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def submit(name: str, steps: int, args: str) -> tuple[Sweep, str]:
    overrides = f"train.steps={steps} train.log_every=20 run.entry={WORKLOAD} {args}"
    sweep, launched = launch.submit("smoke", [7], overrides, name, "slurm", "dev", follow=False)
    return sweep, launched[0].job_id


def watch(sweep: Sweep, until: Callable[[list], bool], timeout_s: float, seen: list, run: str = "s7") -> None:
    """Poll `make status` rows (real squeue/sacct) into `seen` until `until(rows)`; fail after timeout_s."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        rows = sweep_status(sweep)
        seen.append([(r.state, r.requeues) for r in rows])
        if until(rows):
            return
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout_s} s; status seen: {seen[-10:]}; "
                f"log: {tail_log(sweep, run)}")


def tail_log(sweep: Sweep, run: str) -> str:
    logs = sorted((sweep.dir / run / "logs" / "slurm").glob("*_log.out"))
    return logs[-1].read_text()[-3000:] if logs else "no log"


def first_log_row(sweep: Sweep) -> Callable[[list], bool]:
    metrics = sweep.dir / "s7" / "logs" / "metrics.jsonl"
    return lambda rows: metrics.exists() and metrics.stat().st_size > 0 and rows[0].state == "RUNNING"


def assert_exact_finish(sweep: Sweep, steps: int) -> RunState:
    learner = json.loads((sweep.dir / "s7" / "logs" / "final_learner.json").read_text())
    assert learner == json.loads(json.dumps(final_learner(7, steps)))
    return read_run_state(sweep.dir / "s7" / "state.json")


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", "State"], capture_output=True,
                         text=True, timeout=30).stdout
    return [s.split()[0] for s in out.split()]


def test_time_limit_signal_commits_requeues_and_resumes(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    # 1 min limit, USR2 15 s before it (lands 15-45 s in on the 30 s timer): 1100 steps need >= 2 attempts
    sweep, job = submit("limit", 1100, "cluster.time_min=1 cluster.signal_grace_s=15")
    seen: list = []
    watch(sweep, lambda rows: rows[0].state == "DONE", 300, seen)
    state = assert_exact_finish(sweep, 1100)
    stops = [a.stop for a in state.attempts]
    assert len(stops) >= 2 and set(stops[:-1]) == {"timeout"} and stops[-1] is None, stops
    assert [r for r in seen if r[0][0] in ("PENDING", "REQUEUED", "REQUEUE_HOLD") and r[0][1] >= 1], seen
    assert sweep_status(sweep)[0].requeues == len(stops) - 1
    assert sacct_states(job).count("REQUEUED") == len(stops) - 1


def test_preemption_by_a_high_priority_job_requeues_and_resumes(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    sweep, job = submit("preempt", 500, "cluster.cpus=2 cluster.time_min=5")
    seen: list = []
    watch(sweep, first_log_row(sweep), 120, seen)
    high = subprocess.run(["sbatch", "-p", "high", "-c", "2", "-t", "1", "-o", "/dev/null", "--wrap",
                           "sleep 5"], capture_output=True, text=True, check=True).stdout
    watch(sweep, lambda rows: rows[0].requeues >= 1, 120, seen)
    watch(sweep, lambda rows: rows[0].state == "DONE", 240, seen)
    state = assert_exact_finish(sweep, 500)
    assert state.attempts[0].stop == "preempted", state.attempts[0]
    assert "REQUEUED" in sacct_states(job) and high.startswith("Submitted batch job")


def test_external_scontrol_requeue_restarts_from_the_commit(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    sweep, job = submit("ext", 500, "cluster.time_min=5")
    seen: list = []
    watch(sweep, first_log_row(sweep), 120, seen)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    watch(sweep, lambda rows: rows[0].requeues >= 1, 120, seen)
    committed = latest_commit(str(sweep.dir / "s7" / "durable"))["extra"]["progress"]["env_steps"]
    watch(sweep, lambda rows: rows[0].state == "DONE", 240, seen)
    state = assert_exact_finish(sweep, 500)
    assert state.attempts[0].stop == "requeued" and 0 < committed < 500


def test_killed_step_restarts_from_the_last_periodic_commit(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    # commit every 3 s; SIGKILL loses what came after the last commit, and the rerun redoes it exactly
    sweep, job = submit("kill", 500, "cluster.time_min=5 train.commit_every_min=0.05")
    seen: list = []
    durable = str(sweep.dir / "s7" / "durable")
    watch(sweep, lambda rows: rows[0].commit is not None and rows[0].state == "RUNNING", 120, seen)
    # SIGKILL the step's Python (as the OOM killer would); `scancel --signal=KILL` would cancel the whole job
    os.kill(read_run_state(sweep.dir / "s7" / "state.json").attempts[0].pid, signal.SIGKILL)
    watch(sweep, lambda rows: rows[0].requeues >= 1, 120, seen)
    watch(sweep, lambda rows: rows[0].state == "DONE", 240, seen)
    state = assert_exact_finish(sweep, 500)
    assert state.attempts[0].outcome is None  # killed: it never got to record an outcome
    assert latest_commit(durable)["extra"]["progress"]["env_steps"] == 500


def test_cancel_commits_and_resume_continues_with_a_new_job(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    sweep, job = submit("cancel", 400, "cluster.time_min=5")
    seen: list = []
    watch(sweep, first_log_row(sweep), 120, seen)
    assert launch.cancel("cancel") == [job]
    watch(sweep, lambda rows: rows[0].state == "CANCELLED", 120, seen)
    assert read_run_state(sweep.dir / "s7" / "state.json").state == "cancelled"
    committed = latest_commit(str(sweep.dir / "s7" / "durable"))["extra"]["progress"]["env_steps"]
    assert 0 < committed < 400
    _, launched = launch.resume("cancel", follow=False)
    assert len(launched) == 1 and launched[0].job_id != job
    watch(sweep, lambda rows: rows[0].state == "DONE", 240, seen)
    assert_exact_finish(sweep, 400)
    assert [s["how"] for s in sweep.submissions("s7")] == ["submit", "resume"]


@pytest.mark.slow
def test_real_smoke_experiment_survives_preemption(root):
    """`make submit EXP=smoke` on the dev cluster with the real training loop, preempted once."""
    # long enough, and committing often enough, that a commit lands well before the end: on a quiet machine
    # with the compile cache warm, 1500 steps ran in 17 s and ended before a 12 s commit period was seen
    args = "train.steps=4000 train.log_every=100 train.commit_every_min=0.1 cluster.cpus=2"
    sweep, launched = launch.submit("smoke", [0], args, "real", "slurm", "dev", follow=False)
    job = launched[0].job_id
    seen: list = []
    # preempt once the loop has committed (it is compiled by then): a preemption during the first JIT
    # compile is not answered within the partition's 15 s GraceTime and ends in a kill (measured)
    watch(sweep, lambda rows: rows[0].commit is not None and rows[0].state == "RUNNING", 300, seen, run="s0")
    subprocess.run(["sbatch", "-p", "high", "-c", "2", "-t", "1", "-o", "/dev/null", "--wrap", "sleep 2"],
                   check=True, capture_output=True, timeout=30)
    watch(sweep, lambda rows: rows[0].state == "DONE", 480, seen, run="s0")
    state = read_run_state(sweep.dir / "s0" / "state.json")
    assert state.attempts[0].stop == "preempted" and len(state.attempts) >= 2, state.attempts
    assert latest_commit(str(sweep.dir / "s0" / "durable"))["extra"]["progress"]["env_steps"] >= 4000
    assert "REQUEUED" in sacct_states(job)


FAKE_RUNTIME = r"""#!/bin/bash
# stand-in for `singularity exec [--nv] [--bind a,b] IMAGE CMD...`: runs CMD on the host, but like an image
# without Slurm's tools (empty PATH), and records how it was called
[ "$1" = exec ] || exit 64; shift
args="$*"
while [ "${1#--}" != "$1" ]; do if [ "$1" = --bind ]; then shift 2; else shift; fi; done
image="$1"; shift
[ -f "$image" ] || { echo "no image $image" >&2; exit 65; }
echo "$args" >> "$image.calls"
exec env PATH=/nonexistent "$@"
"""


def test_requeue_works_when_the_job_runs_in_a_container_without_scontrol(root, monkeypatch, tmp_path):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    runtime, image = tmp_path / "singularity", tmp_path / "r2i.sif"
    runtime.write_text(FAKE_RUNTIME)
    runtime.chmod(0o755)
    image.write_text("not a real image")
    sweep, job = submit("box", 400, f"cluster.time_min=5 cluster.container.image={image} "
                        f"cluster.container.runtime={runtime} cluster.container.python={sys.executable}")
    seen: list = []
    watch(sweep, first_log_row(sweep), 120, seen)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)  # like submitit's _interrupt()
    watch(sweep, lambda rows: rows[0].state == "DONE", 240, seen)
    state = assert_exact_finish(sweep, 400)
    assert state.attempts[0].stop == "interrupted" and len(state.attempts) == 2, state.attempts
    calls = (tmp_path / "r2i.sif.calls").read_text().splitlines()
    assert len(calls) == 2 and f"--nv --bind {root}" in calls[0], calls
