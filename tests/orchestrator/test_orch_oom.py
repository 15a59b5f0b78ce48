"""Attempts killed for memory: a real local child SIGKILLed under the watcher (the kernel's OOM count faked where it
is read), and Slurm's OUT_OF_MEMORY from sacct lines (faked at the runner), in state.json and in `make status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator import oom
from orchestrator.compose import compose_runs
from orchestrator.job import LOCAL_REQUEUE_EXIT
from orchestrator.run_state import read_run_state
from orchestrator.status import pid_alive, run_status, sweep_status, to_json
from orchestrator.sweep import Request, create_sweep
from tests.orchestrator.run_states import attempt, write_state


def make_sweep(tmp_path, profile: str):
    root = tmp_path / "runs"
    runs = compose_runs("smoke", None, f"run.root={root}", profile)
    return create_sweep(root, "oom", Request("smoke", None, [], profile), runs)


def job_script(run_dir, counter, then: str) -> list[str]:
    """A child that records its attempt as run_job does, then `then` (the kernel's verdict and the kill)."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from dataclasses import replace
        from orchestrator.run_state import RunState, write_run_state
        from tests.orchestrator.run_states import attempt
        state_path = {str(run_dir / "state.json")!r}
        state = RunState(state="running", updated=time.time(),
                         attempts=(attempt("1", cluster="local", pid=os.getpid(), start=time.time()),))
        write_run_state(state_path, state)
        counter = {str(counter)!r}
    """) + textwrap.dedent(then)
    return [sys.executable, "-c", code]


OOM_KILL = """
    open(counter, "w").write("oom 0\\noom_kill 4\\n")  # the kernel counts the kill it is about to make
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def counter(tmp_path):
    p = tmp_path / "memory.events"
    p.write_text("oom 0\noom_kill 3\n")
    return p


def test_local_child_sigkilled_by_the_oom_killer_is_out_of_memory(tmp_path, counter):
    sweep = make_sweep(tmp_path, "local")
    run_dir = sweep.dir / sweep.runs[0]
    rc = oom.supervise(run_dir, job_script(run_dir, counter, OOM_KILL), counter=[counter])
    assert rc == 128 + signal.SIGKILL
    state = read_run_state(run_dir / "state.json")
    assert state.state == "out_of_memory" and state.last.outcome == "out_of_memory"
    assert state.last.exit == -signal.SIGKILL and state.last.oom_kills == (3, 4)
    assert state.error == ("killed for memory, not requeued: free memory on this machine (then make resume) "
                           "or lower train.num_envs=2 (a new sweep)")
    dead = str(state.last.pid)  # reaped by supervise: not alive
    sweep.record_submission(sweep.runs[0], dead, "local")
    row = run_status(sweep, sweep.runs[0], {}, {})
    assert (row.state, row.reason) == ("OOM", state.error)
    assert json.loads(to_json("oom", [row]))["counts"] == {"OOM": 1}


def test_local_sigkill_without_an_oom_kill_is_killed(tmp_path, counter):
    sweep = make_sweep(tmp_path, "local")
    run_dir = sweep.dir / sweep.runs[0]
    rc = oom.supervise(run_dir, job_script(run_dir, counter, "os.kill(os.getpid(), signal.SIGKILL)"),
                       counter=[counter])
    assert rc == 137
    state = read_run_state(run_dir / "state.json")
    assert state.state == "killed" and "not by the kernel's OOM killer" in state.error
    sweep.record_submission(sweep.runs[0], str(state.last.pid), "local")
    assert run_status(sweep, sweep.runs[0], {}, {}).state == "KILLED"


def test_local_worker_killed_for_memory_fails_the_job_as_out_of_memory(tmp_path, counter):
    """The OOM killer took an env worker; the job failed with the worker's error: still out of memory."""
    sweep = make_sweep(tmp_path, "local")
    run_dir = sweep.dir / sweep.runs[0]
    fail = """
        open(counter, "w").write("oom_kill 4\\n")
        state = replace(state, state="failed", error="EnvWorkerError: env worker 3 died, exit code -9")
        write_run_state(state_path, state.with_last(outcome="failed"))
        sys.exit(1)
    """
    assert oom.supervise(run_dir, job_script(run_dir, counter, fail), counter=[counter]) == 1
    state = read_run_state(run_dir / "state.json")
    assert state.state == "out_of_memory" and state.error.endswith("(EnvWorkerError: env worker 3 died, "
                                                                   "exit code -9)")


@pytest.mark.parametrize("exit_code", [0, LOCAL_REQUEUE_EXIT])
def test_local_clean_exits_pass_through_untouched(tmp_path, counter, exit_code):
    sweep = make_sweep(tmp_path, "local")
    run_dir = sweep.dir / sweep.runs[0]
    then = f"open(counter, 'w').write('oom_kill 9\\\\n'); sys.exit({exit_code})"
    assert oom.supervise(run_dir, job_script(run_dir, counter, then), counter=[counter]) == exit_code
    assert read_run_state(run_dir / "state.json").state == "running"


def test_watcher_forwards_the_stop_signal(tmp_path, counter):
    """The local controller signals the watcher; the job must get it (it stops with a commit)."""
    sweep = make_sweep(tmp_path, "local")
    run_dir = sweep.dir / sweep.runs[0]
    then = """
        signal.signal(signal.SIGUSR2, lambda *a: sys.exit(44))
        os.kill(os.getppid(), signal.SIGUSR2)  # as submitit's controller does to its task at the time limit
        time.sleep(30)
        sys.exit(1)
    """
    before = signal.getsignal(signal.SIGUSR2)
    assert oom.supervise(run_dir, job_script(run_dir, counter, then), counter=[counter]) == 44
    assert signal.getsignal(signal.SIGUSR2) is before


def test_slurm_out_of_memory_from_sacct_lines(tmp_path, fake_bin):
    sweep = make_sweep(tmp_path, "dev")
    run = sweep.runs[0]
    write_state(sweep.dir / run, "running", attempt("77", 0, pid=5))
    sweep.record_submission(run, "77", "slurm")
    for name in ("squeue", "sacct"):  # present on PATH; their output comes from the runner below
        fake_bin(name, "exit 3")
    seen = []

    def runner(argv: list[str]) -> str:
        seen.append(argv[0])
        return {"squeue": "", "sacct": "77|OUT_OF_MEMORY|0:125|00:03:10\n"}[argv[0]]

    row = sweep_status(sweep, runner)[0]
    assert seen == ["squeue", "sacct"]
    assert row.state == "OOM" and row.reason == (
        "killed for memory, not requeued: raise cluster.mem_gb (unset: the partition's default; in the run's "
        "config.yaml, then make resume) or lower train.num_envs=2 (a new sweep)")
    state = read_run_state(sweep.dir / run / "state.json")
    assert state.state == "out_of_memory" and state.last.outcome == "out_of_memory"
    assert state.last.slurm_state == "OUT_OF_MEMORY"
    assert sweep_status(sweep, runner)[0].reason == row.reason  # recorded once, not appended to again


def test_oom_kill_count_reads_cgroup_v1_v2_and_vmstat(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/slurm/job_9/step_0\n0::/user.slice/s.scope\n")
    files = oom.cgroup_oom_files(proc, tmp_path / "fs")
    assert files == [tmp_path / "fs/memory/slurm/job_9/step_0/memory.oom_control",
                     tmp_path / "fs/user.slice/s.scope/memory.events"]
    files[1].parent.mkdir(parents=True)
    files[1].write_text("low 0\nhigh 0\nmax 2\noom 2\noom_kill 2\n")
    assert oom.oom_kill_count(files) == 2  # the v1 file is absent: the next counter answers
    assert oom.oom_kill_count([tmp_path / "none"]) is None


def test_a_local_job_sigkilled_through_the_real_launcher_is_recorded(root, monkeypatch):
    """`make submit` locally (detached, through submitit's controller and the watcher); the job's process is
    SIGKILLed mid-run. No OOM kill happens here, so the verdict is `killed`, and nothing reruns it."""
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.05")
    from orchestrator.config import REPO_ROOT
    from tests.orchestrator.orch_workload import WORKLOAD

    cmd = [sys.executable, "-m", "orchestrator", "submit", "--exp", "smoke", "--sweep", "k", "--cluster", "local",
           "--detach", "--args", f"train.steps=100000 run.entry={WORKLOAD} run.root={root}"]
    log = root.parent / "cli.log"  # a file, not a pipe: the detached job outlives the CLI and holds its streams
    with open(log, "w") as f:
        out = subprocess.run(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=120)
    assert out.returncode == 0, log.read_text()
    run = root / "k" / "s0"
    deadline = time.time() + 60
    while not (run / "logs" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(read_run_state(run / "state.json").last.pid, signal.SIGKILL)
    controller = json.loads((run / "submissions.jsonl").read_text().splitlines()[-1])["job_id"]
    while pid_alive(controller) and time.time() < deadline + 60:
        time.sleep(0.1)
    state = read_run_state(run / "state.json")
    assert state.state == "killed" and len(state.attempts) == 1, state
    status = subprocess.run([sys.executable, "-m", "orchestrator", "--root", str(root), "status", "--sweep", "k",
                             "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["runs"][0]["state"] == "KILLED"
