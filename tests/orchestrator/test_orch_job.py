"""The job lifecycle in-process: signals set a flag, the workload commits, the exit status asks for a requeue,
and a rerun resumes from the durable store to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest

from buffer import CorruptChunkError, NoRestorableCommitError, WriterFencedError, chunk_objects, manifest_keys
from orchestrator.compose import compose_runs
from orchestrator.job import LOCAL_REQUEUE_EXIT, StopFlag, run_job
from orchestrator.run_state import read_run_state
from orchestrator.slurm import REQUEUE_EXIT
from orchestrator.status import latest_commit
from orchestrator.sweep import Request, create_sweep, read_json
from tests.orchestrator.orch_workload import CORRUPT, FENCED_AFTER_CORRUPT, NO_FALLBACK, WORKLOAD, final_learner
from tests.orchestrator.run_states import attempt, write_state

SCONTROL = ('echo "JobId=42 JobState={state} Reason=None Restarts=0 EndTime=2099-01-01T00:00:00 '
            'PreemptTime={preempt} Partition=low"')


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def make_run(root, steps: int, args: str = "") -> str:
    runs = compose_runs("smoke", [3], f"train.steps={steps} train.log_every=50 run.entry={WORKLOAD} {args}",
                        "local")
    sweep = create_sweep(root, "job", Request("smoke", [3], [], "local"), runs)
    return str(sweep.dir / runs[0].name)


@pytest.fixture
def signal_after_first_log():
    """`arm(run_dir, sig)`: once the workload has logged its first metrics row, send `sig` to this process, or,
    under a (simulated) step wrapper, write the stop request file as the wrapper does on that signal."""
    done = threading.Event()

    def arm(run_dir: str, sig: int) -> None:
        metrics = os.path.join(run_dir, "logs", "metrics.jsonl")
        request = os.environ.get("R2I_FACTS_FILE")

        def watch() -> None:
            while not done.is_set():
                if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
                    if request:
                        with open(request + ".tmp", "w") as f:
                            f.write(f"Signal={signal.Signals(sig).name} SignalTime={int(time.time())}\n")
                        os.replace(request + ".tmp", request)
                    else:
                        os.kill(os.getpid(), sig)
                    return
                time.sleep(0.01)

        threading.Thread(target=watch, daemon=True).start()

    yield arm
    done.set()


def test_stop_commits_and_rerun_resumes_to_the_uninterrupted_result(root, monkeypatch,
                                                                    signal_after_first_log):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.004")
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    run_dir = make_run(root, 400)
    signal_after_first_log(run_dir, signal.SIGUSR2)  # the local controller's timeout signal
    with pytest.raises(SystemExit) as exit_:
        run_job(run_dir)
    assert exit_.value.code == LOCAL_REQUEUE_EXIT
    state = read_run_state(root / "job" / "s3" / "state.json")
    assert state.state == "requeued" and state.attempts[0].stop == "timeout"
    progress = latest_commit(f"{run_dir}/durable")["extra"]["progress"]
    assert 0 < progress["env_steps"] < 400, progress
    assert run_job(run_dir) == "done"
    got = json.loads((root / "job" / "s3" / "logs" / "final_learner.json").read_text())
    assert got == json.loads(json.dumps(final_learner(3, 400)))
    assert run_job(run_dir) == "done"  # a done run is not run again
    assert len(read_run_state(root / "job" / "s3" / "state.json").attempts) == 2


def test_slurm_preemption_asks_the_host_to_requeue(root, monkeypatch, fake_bin, signal_after_first_log):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.004")
    monkeypatch.setenv("R2I_FACTS_FILE", str(root.parent / "facts-42-0.txt"))  # as under step.sh
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    fake_bin("scontrol", SCONTROL.format(state="RUNNING", preempt="2026-11-21T20:00:40"))
    run_dir = make_run(root, 100000)
    signal_after_first_log(run_dir, signal.SIGUSR2)
    with pytest.raises(SystemExit) as exit_:
        run_job(run_dir)
    assert exit_.value.code == REQUEUE_EXIT
    state = read_run_state(root / "job" / "s3" / "state.json")
    assert state.state == "requeued" and state.last.stop == "preempted"
    assert state.last.facts.preempt_time is not None and state.last.signal == "SIGUSR2"
    # under the wrapper the job ignores the signals (its env workers inherit that) and watches the file
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN == signal.getsignal(signal.SIGTERM)


def test_slurm_requeue_cap_gives_a_clear_final_state(root, monkeypatch, fake_bin, signal_after_first_log):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.004")
    monkeypatch.setenv("R2I_FACTS_FILE", str(root.parent / "facts-42-3.txt"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    fake_bin("scontrol", SCONTROL.format(state="RUNNING", preempt="None"))
    run_dir = make_run(root, 100000, "cluster.max_requeues=3")
    signal_after_first_log(run_dir, signal.SIGUSR2)
    assert run_job(run_dir) == "stopped"
    state = read_run_state(root / "job" / "s3" / "state.json")
    assert state.state == "requeue_limit" and state.last.stop == "interrupted"


def test_scancel_stops_with_a_commit_and_no_requeue(root, monkeypatch, fake_bin, signal_after_first_log):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.004")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    fake_bin("scontrol", SCONTROL.format(state="CANCELLED", preempt="None"))
    run_dir = make_run(root, 100000)
    signal_after_first_log(run_dir, signal.SIGTERM)
    assert run_job(run_dir) == "stopped"
    assert read_run_state(root / "job" / "s3" / "state.json").state == "cancelled"
    assert latest_commit(f"{run_dir}/durable")["extra"]["progress"]["env_steps"] > 0


def test_resume_on_other_hardware_warns(root, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = make_run(root, 20)
    other = {"machine": "x86_64", "cpu": "Some Other CPU", "cpus": 64, "gpus": "0"}
    write_state(root / "job" / "s3", "requeued", attempt("1", 0, device=other))
    assert run_job(run_dir) == "done"
    (warning,) = read_run_state(root / "job" / "s3" / "state.json").warnings
    assert "different hardware" in warning and "Some Other CPU" in warning


def test_stop_flag_falls_back_to_slurms_end_time():
    assert StopFlag(end_time=time.time() + 10, grace_s=30)()
    assert not StopFlag(end_time=time.time() + 100, grace_s=30)()
    flag = StopFlag()
    flag.handler(signal.SIGUSR2)
    flag.handler(signal.SIGTERM)  # the first signal is the one that counts
    assert flag() and flag.signal == "SIGUSR2"


@pytest.mark.parametrize("cluster, restarts, max_requeues, entry, outcome", [
    ("slurm", 0, 3, CORRUPT, REQUEUE_EXIT),
    ("slurm", 2, 3, CORRUPT, REQUEUE_EXIT),
    ("slurm", 3, 3, CORRUPT, CorruptChunkError),  # the requeues are used up: the job fails with the error
    ("local", 0, 3, CORRUPT, LOCAL_REQUEUE_EXIT),
    ("slurm", 0, 3, FENCED_AFTER_CORRUPT, WriterFencedError),  # another copy owns the run: never requeue
    ("slurm", 0, 3, NO_FALLBACK, NoRestorableCommitError),  # no commit to fall back to: a requeue cannot help
])
def test_a_corrupt_chunk_asks_for_a_requeue_within_the_limit(root, monkeypatch, cluster, restarts, max_requeues,
                                                             entry, outcome):
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "R2I_FACTS_FILE"):
        monkeypatch.delenv(var, raising=False)
    if cluster == "slurm":
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    run_dir = make_run(root, 100, f"run.entry={entry} cluster.max_requeues={max_requeues}")
    if isinstance(outcome, int):
        with pytest.raises(SystemExit) as exit_:
            run_job(run_dir)
        assert exit_.value.code == outcome
    else:
        with pytest.raises(outcome):
            run_job(run_dir)
    state = read_run_state(root / "job" / "s3" / "state.json")
    want = "requeued" if isinstance(outcome, int) else "failed"
    assert state.state == want, state
    assert state.last.outcome == ("corrupt_chunk" if isinstance(outcome, int) else "failed"), state.last
    if entry == CORRUPT:
        assert (state.last.stop, state.last.corrupt.key) == ("corrupt_chunk", "chunks/0/0000000003-0badc0de.bin")


def test_a_chunk_corrupted_on_disk_is_requeued_and_the_rerun_ends_in_the_uninterrupted_result(
        root, monkeypatch, signal_after_first_log):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.004")
    for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "R2I_FACTS_FILE"):
        monkeypatch.delenv(var, raising=False)
    # 32-step chunks, a commit every ~30 ms and every manifest kept: the first stop (after step 50) leaves
    # commits from before chunk 0 was finished, the fallback once chunk 0 is found corrupt
    run_dir = make_run(root, 400, "replay.chunk=32 replay.inner=16 replay.keep=1000 train.commit_every_min=0.0005")
    signal_after_first_log(run_dir, signal.SIGUSR2)
    with pytest.raises(SystemExit) as exit_:
        run_job(run_dir)
    assert exit_.value.code == LOCAL_REQUEUE_EXIT
    durable = f"{run_dir}/durable"
    (key,) = [o.key for o in chunk_objects(durable, manifest_keys(durable)[0])]
    with open(f"{durable}/{key}", "r+b") as f:  # same size, other bytes: only the checksum can tell
        f.seek(40)
        f.write(b"\xde\xad\xbe\xef")
    shutil.rmtree(read_json(root / "job" / "s3" / "run.json")["scratch"])  # a new node: fetch from durable
    with pytest.raises(SystemExit) as exit_:
        run_job(run_dir)
    assert exit_.value.code == LOCAL_REQUEUE_EXIT
    state = read_run_state(root / "job" / "s3" / "state.json")
    assert state.state == "requeued" and state.last.corrupt.key == key
    assert not os.path.exists(f"{durable}/{key}") and os.listdir(f"{durable}/quarantine/chunks/0")
    assert run_job(run_dir) == "done"
    got = json.loads((root / "job" / "s3" / "logs" / "final_learner.json").read_text())
    assert got == json.loads(json.dumps(final_learner(3, 400)))


def test_gpu_determinism_flags_are_added_once_and_a_users_choice_is_kept() -> None:
    from orchestrator.job import pin_xla_flags

    assert pin_xla_flags("") == "--xla_gpu_deterministic_ops=true"
    assert pin_xla_flags("--xla_force_host_platform_device_count=2") == (
        "--xla_force_host_platform_device_count=2 --xla_gpu_deterministic_ops=true")
    assert pin_xla_flags(pin_xla_flags("")) == "--xla_gpu_deterministic_ops=true"
    assert pin_xla_flags("--xla_gpu_deterministic_ops=false") == "--xla_gpu_deterministic_ops=false"
