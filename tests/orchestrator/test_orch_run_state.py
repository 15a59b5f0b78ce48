"""state.json as a record: files the job wrote before the record existed load and write back byte for byte the
same JSON, updates return new records, and a file that is not a run state fails in one line naming it."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import pytest

from orchestrator.compose import compose_runs
from orchestrator.run_state import (
    CorruptChunk,
    RunState,
    RunStateError,
    StopFacts,
    read_run_state,
    write_run_state,
)
from orchestrator.status import run_status
from orchestrator.sweep import Request, create_sweep
from tests.orchestrator.run_states import attempt, write_state

DEVICE = {"cpu": "Intel(R) Xeon(R) Processor", "cpus": 2, "gpus": "", "jax_devices": ["cpu"], "machine": "x86_64"}

# Written by the job before the record existed (run_job under the lifecycle tests; tracebacks cut short).
# A local run stopped by its time limit, then done: `signal` is null on the attempt that ended without one.
LOCAL_TIMEOUT_THEN_DONE = {
    "attempts": [
        {"cluster": "local", "device": DEVICE, "end": 1796425508.0305088, "host": "vm", "job_id": "22982",
         "outcome": "stopped", "pid": 22982, "restart": 0, "signal": "SIGUSR2", "start": 1796425507.795532,
         "stop": "timeout"},
        {"cluster": "local", "device": DEVICE, "end": 1796425509.5985317, "host": "vm", "job_id": "22982",
         "outcome": "done", "pid": 22982, "restart": 0, "signal": None, "start": 1796425508.09909}],
    "job_id": "22982", "restart": 0, "state": "done", "updated": 1796425509.5985367, "warnings": []}
# A Slurm preemption: Slurm's facts at the stop.
SLURM_PREEMPTED = {
    "attempts": [
        {"cluster": "slurm", "device": DEVICE, "end": 1796425510.3326118,
         "facts": {"end_time": 4070908800.0, "preempt_time": 1795291240.0, "signal_time": 1796425510.0,
                   "state": "RUNNING"},
         "host": "vm", "job_id": "42", "outcome": "stopped", "pid": 22982, "restart": 0, "signal": "SIGUSR2",
         "start": 1796425509.9128094, "stop": "preempted"}],
    "job_id": "42", "restart": 0, "state": "requeued", "updated": 1796425510.3391516, "warnings": []}
# A corrupt durable chunk: requeued for the fallback.
SLURM_CORRUPT_CHUNK = {
    "attempts": [
        {"cluster": "slurm", "corrupt": {"key": "chunks/0/0000000003-0badc0de.bin",
                                         "manifest": "manifests/0000000002-000001.json"},
         "device": DEVICE, "end": 1796425511.136623, "host": "vm", "job_id": "42", "outcome": "corrupt_chunk",
         "pid": 22982, "restart": 2, "start": 1796425511.1360638, "stop": "corrupt_chunk",
         "traceback": "Traceback (most recent call last):\n  ...\nCorruptChunkError: chunk failed its checksum\n"}],
    "job_id": "42", "restart": 2, "state": "requeued", "updated": 1796425511.137082, "warnings": []}
# A local job that failed when an env worker was killed for memory; the OOM watcher's verdict on top, and a
# warning from a resume on other hardware.
LOCAL_FAILED_OUT_OF_MEMORY = {
    "attempts": [
        {"cluster": "local", "device": DEVICE, "end": 1796425600.5, "exit": 1, "host": "vm", "job_id": "3100",
         "oom_kills": [3, 4], "outcome": "out_of_memory", "pid": 3101, "restart": 0, "start": 1796425590.25,
         "traceback": "Traceback (most recent call last):\n  ...\nEnvWorkerError: env worker 3 died\n"}],
    "error": "killed for memory, not requeued: free memory on this machine (then make resume) or lower "
             "train.num_envs=2 (a new sweep) (EnvWorkerError: env worker 3 died, exit code -9)",
    "job_id": "3100", "restart": 0, "state": "out_of_memory", "updated": 1796425601.0,
    "warnings": ["attempt 1 runs on different hardware ({...} -> {...}): it continues exactly from the committed "
                 "state, but later bits will differ"]}
# Only the OOM watcher wrote: the job was killed before its first word (no job_id, restart, attempts' content).
WATCHER_ONLY = {"attempts": [], "error": "killed by SIGKILL (not by the kernel's OOM killer)", "state": "killed",
                "updated": 1796425700.0, "warnings": []}
OLD_FILES = [LOCAL_TIMEOUT_THEN_DONE, SLURM_PREEMPTED, SLURM_CORRUPT_CHUNK, LOCAL_FAILED_OUT_OF_MEMORY,
             WATCHER_ONLY]


@pytest.mark.parametrize("old", OLD_FILES, ids=["timeout-done", "preempted", "corrupt", "oom", "watcher"])
def test_files_from_before_the_record_load_and_write_back_the_same_json(tmp_path, old):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    state = read_run_state(path)
    assert state.to_json() == old
    write_run_state(path, state)
    assert json.loads(path.read_text()) == old and read_run_state(path) == state


def test_old_files_read_as_typed_records(tmp_path):
    states = {}
    for name, old in (("done", LOCAL_TIMEOUT_THEN_DONE), ("pre", SLURM_PREEMPTED), ("bad", SLURM_CORRUPT_CHUNK),
                      ("oom", LOCAL_FAILED_OUT_OF_MEMORY), ("watcher", WATCHER_ONLY)):
        (tmp_path / name).write_text(json.dumps(old))
        states[name] = read_run_state(tmp_path / name)
    done = states["done"]
    assert (done.state, done.job_id, [a.stop for a in done.attempts]) == ("done", "22982", ["timeout", None])
    assert done.last.signal is None and done.last.device == DEVICE
    assert states["pre"].last.facts == StopFacts(state="RUNNING", preempt_time=1795291240.0, end_time=4070908800.0,
                                                 signal_time=1796425510.0)
    assert states["bad"].last.corrupt == CorruptChunk("chunks/0/0000000003-0badc0de.bin",
                                                      "manifests/0000000002-000001.json")
    assert (states["oom"].last.exit, states["oom"].last.oom_kills) == (1, (3, 4))
    watcher = states["watcher"]
    assert (watcher.attempts, watcher.job_id, watcher.restart, watcher.state) == ((), None, None, "killed")


def test_optional_keys_absent_stay_absent_and_lists_default_to_empty(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"state": "requeued", "updated": 2.0, "attempts": [
        {"job_id": "9", "restart": 0, "cluster": "slurm", "host": "n", "pid": 1, "device": {}, "start": 1.0}]}))
    state = read_run_state(path)
    assert state.warnings == () and state.error is None and state.last.end is None
    assert set(state.to_json()) == {"state", "updated", "attempts", "warnings"}
    assert set(state.last.to_json()) == {"job_id", "restart", "cluster", "host", "pid", "device", "start"}
    assert read_run_state(tmp_path / "absent.json") is None


def test_round_trip_of_a_record_built_by_updates(tmp_path):
    first = attempt("42", 0, device=DEVICE)
    state = RunState.begin(None, first, now=10.0)
    state = state.with_last(end=11.0, outcome="stopped", signal=None, stop="interrupted",
                            facts=StopFacts(state="RUNNING", preempt_time=None, end_time=20.0, signal_time=10.5))
    state = replace(state, state="requeued", updated=11.5)
    state = RunState.begin(state, attempt("42", 1, device=DEVICE), now=12.0, warning="other hardware")
    state = state.with_last(end=13.0, outcome="done", signal="SIGUSR2")
    state = replace(state, state="done", updated=13.0)
    path = tmp_path / "state.json"
    write_run_state(path, state)
    assert read_run_state(path) == state
    on_disk = json.loads(path.read_text())
    assert (on_disk["job_id"], on_disk["restart"], on_disk["warnings"]) == ("42", 1, ["other hardware"])
    assert on_disk["attempts"][0]["signal"] is None and on_disk["attempts"][0]["facts"]["preempt_time"] is None
    with pytest.raises(FrozenInstanceError):
        state.state = "running"
    assert [a.restart for a in state.attempts] == [0, 1]


def test_unknown_keys_of_a_newer_writer_are_kept(tmp_path):
    newer = json.loads(json.dumps(SLURM_PREEMPTED))
    newer["queue_wait_s"] = 12.5
    newer["attempts"][0]["gpu_memory_gb"] = 80
    newer["attempts"][0]["facts"]["partition"] = "low"
    path = tmp_path / "state.json"
    path.write_text(json.dumps(newer))
    state = read_run_state(path).with_last(outcome="killed")  # as the OOM watcher rewrites it
    write_run_state(path, replace(state, state="killed", updated=1.0))
    back = json.loads(path.read_text())
    assert back["queue_wait_s"] == 12.5 and back["attempts"][0]["gpu_memory_gb"] == 80
    assert back["attempts"][0]["facts"]["partition"] == "low" and back["attempts"][0]["outcome"] == "killed"


@pytest.mark.parametrize("text, says", [
    ("{\"state\": \"done\", \"updat", "not JSON"),
    ("[1, 2]", "state.json must be a JSON object, not list"),
    (json.dumps({"updated": 1.0}), "state.json lacks 'state'"),
    (json.dumps({"state": "done", "updated": "yesterday"}), "state.json['updated'] is \"yesterday\", expected int"),
    (json.dumps({"state": "done", "updated": 1.0, "attempts": [{"job_id": "1"}]}), "attempts[0] lacks 'restart'"),
    (json.dumps({"state": "done", "updated": 1.0, "attempts": [
        {"job_id": "1", "restart": True, "cluster": "slurm", "host": "n", "pid": 1, "device": {}, "start": 1.0}]}),
     "attempts[0]['restart'] is true, expected int"),
    (json.dumps({"state": "done", "updated": 1.0, "warnings": [3]}), "warnings[0] is 3, expected str"),
])
def test_a_malformed_file_fails_in_one_line_naming_the_file_and_the_key(tmp_path, text, says):
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(RunStateError) as e:
        read_run_state(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


def test_updates_check_their_index():
    state = RunState(state="new", updated=0.0)
    with pytest.raises(AssertionError, match="no attempt"):
        state.with_last(outcome="done")
    with pytest.raises(AssertionError):
        RunState.begin(None, attempt("1"), 1.0).with_attempt(1, outcome="done")


def test_status_renders_a_run_whose_state_file_it_cannot_read(tmp_path):
    root = tmp_path / "runs"
    runs = compose_runs("smoke", [0, 1], f"run.root={root}", "local")
    sweep = create_sweep(root, "bad", Request("smoke", [0, 1], [], "local"), runs)
    (sweep.dir / "s0" / "state.json").write_text("{\"state\": ")
    write_state(sweep.dir / "s1", "failed", attempt("999999999", cluster="local"), error="boom")
    sweep.record_submission("s0", "999999998", "local")
    sweep.record_submission("s1", "999999999", "local")
    bad, good = (run_status(sweep, r, {}, {}) for r in ("s0", "s1"))
    assert bad.state == "STOPPED" and len(bad.warnings) == 1 and "s0/state.json: not JSON" in bad.warnings[0]
    assert (good.state, good.reason, good.warnings) == ("FAILED", "boom", [])
