"""The host side of a Slurm step, run for real with bash: the step wrapper (signals, facts, forwarding) and the
sbatch teardown (requeue on the job's request or a killed step, capped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator import slurm

CHILD = r"""
import os, sys, time
time.sleep(float(sys.argv[1]))  # still "starting up": a USR2 to the step now must neither kill nor be lost
print("ready", flush=True)
deadline = time.time() + 20
while not os.path.exists(os.environ["R2I_FACTS_FILE"]) and time.time() < deadline:
    time.sleep(0.01)
print("request", open(os.environ["R2I_FACTS_FILE"]).readline().split()[0], flush=True)
sys.exit(75)
"""


@pytest.fixture
def slurm_env(tmp_path, fake_bin, monkeypatch):
    fake_bin("scontrol", 'echo "JobId=$4 JobState=RUNNING Restarts=0 PreemptTime=2026-11-21T20:00:40"')
    fake_bin("squeue", 'echo "2026-11-21T21:00:00"')
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    return tmp_path


def start_step(facts_dir, delay_s: float) -> subprocess.Popen:
    """The wrapper around a child that starts after `delay_s`, in its own process group like a Slurm step."""
    return subprocess.Popen(["bash", str(slurm.STEP_WRAPPER), str(facts_dir), sys.executable, "-c", CHILD,
                             str(delay_s)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("delay_s", [0.0, 1.0])
def test_signal_to_the_whole_step_becomes_a_stop_request_file(slurm_env, delay_s):
    p = start_step(slurm_env, delay_s)
    if delay_s == 0.0:
        assert p.stdout.readline().strip() == "ready"
    else:
        time.sleep(0.3)  # the child has not started its Python work yet
    os.killpg(p.pid, signal.SIGUSR2)  # slurmstepd signals every process of the step
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 75 and "request Signal=SIGUSR2" in out, out
    facts = (slurm_env / "facts-42-1.txt").read_text()
    assert facts.startswith("Signal=SIGUSR2 SignalTime=") and "PreemptTime=2026-11-21T20:00:40" in facts
    assert slurm.facts_from({"SLURM_RESTART_COUNT": "1"}, facts).preempt_time is not None


def test_the_first_signal_is_the_request(slurm_env):
    p = start_step(slurm_env, 0.0)
    assert p.stdout.readline().strip() == "ready"
    os.killpg(p.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.killpg(p.pid, signal.SIGUSR2)
    out, _ = p.communicate(timeout=30)
    assert "request Signal=SIGTERM" in out, out


def teardown(step_exit: int, restarts: int, tmp_path, fake_bin, sacct: str = "42|RUNNING\n42.batch|RUNNING\n",
             stdout: list | None = None) -> str:
    log = tmp_path / "scontrol.log"
    fake_bin("scontrol", f'echo "$@" >> {log}')
    fake_bin("sacct", f"printf {sacct!r}")  # `sacct -n -P -j 42 -o JobID,State` of this incarnation
    script = f"(exit {step_exit})\n" + "\n".join(slurm.teardown_lines(max_requeues=3))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={**os.environ, "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": str(restarts)})
    assert out.returncode == step_exit
    if stdout is not None:
        stdout.append(out.stdout)
    return log.read_text() if log.exists() else ""


@pytest.mark.parametrize("step_exit, restarts, requeued", [
    (slurm.REQUEUE_EXIT, 0, True),  # the job committed and asks for it
    (137, 2, True),  # the step was SIGKILLed: rerun from the last commit
    (slurm.REQUEUE_EXIT, 3, False),  # the cap
    (0, 0, False),  # done
    (1, 0, False),  # a Python exception: rerunning would fail the same way
])
def test_teardown_requeues_on_request_or_kill_up_to_the_cap(tmp_path, fake_bin, step_exit, restarts, requeued):
    assert (teardown(step_exit, restarts, tmp_path, fake_bin) == "requeue 42\n") == requeued


def test_teardown_does_not_requeue_a_step_killed_for_memory(tmp_path, fake_bin):
    """sacct's lines for an attempt whose step the cgroup OOM-killed: it would die the same way again."""
    out: list[str] = []
    oom = "42|OUT_OF_MEMORY\n42.batch|OUT_OF_MEMORY\n42.0|OUT_OF_MEMORY\n"
    assert teardown(137, 0, tmp_path, fake_bin, sacct=oom, stdout=out) == ""
    assert out[0].strip() == ("r2i: job 42 was killed for memory (OUT_OF_MEMORY), not requeueing: raise "
                              "cluster.mem_gb (the run config.yaml, then make resume) or lower train.num_envs "
                              "(a new sweep)")
    # killed by something else (a node failure, scancel --signal KILL): still requeued
    assert teardown(137, 0, tmp_path, fake_bin, sacct="42|RUNNING\n42.0|CANCELLED\n") == "requeue 42\n"
