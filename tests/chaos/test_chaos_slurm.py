"""The CI slice of `make chaos` (real dev cluster, < 2 min): a SIGKILL in the middle of a commit and a second copy
of the job started while the first runs, each against one uninterrupted run submitted the same way.

The job runs the small real workload of the orchestrator tests (a bandit learner on the real replay buffer,
`tests/orchestrator/orch_workload.py`) so the buffer's commit, restore and writer fencing are the real ones;
`make chaos` does the same with the real training loop."""

from __future__ import annotations

import random

import pytest

from bench.chaos_faults import Settings, run_trial
from bench.chaos_verdict import verdict
from tests.orchestrator.orch_workload import WORKLOAD

# `make test-slurm` runs it as a `slurm` test and `make chaos` as its first step. The second copy of the job
# works in a scratch folder of its own (the buffer's per-process scratch lock), so the older copy ends at the
# writer fence this test asserts, not on a shard file the newer one swept.
pytestmark = [pytest.mark.slurm, pytest.mark.chaos, pytest.mark.usefixtures("slurm_cluster")]

SETTINGS = Settings(
    overrides=("train.steps=400 train.log_every=20 train.commit_every_min=0.02 replay.chunk=32 replay.inner=16 "
               "cluster.cpus=1 cluster.time_min=5"),
    target=WORKLOAD, env={"R2I_TEST_STEP_S": "0.03"}, max_delay_s=3.0,
    timeout_s=150.0, faults_per_trial=1)


@pytest.mark.timeout(400)
def test_kill_mid_commit_and_second_writer_end_in_the_uninterrupted_state(tmp_path, monkeypatch):
    monkeypatch.setenv("R2I_RUN_ROOT", str(tmp_path / "runs"))
    rng = random.Random(0)
    ref = run_trial("reference", 0, SETTINGS, rng)
    assert ref["state"] == "done" and "fingerprint" in ref, ref.get("error") or ref.get("run_error")
    assert ref["fingerprint"]["corrupt"] == []

    killed = run_trial("kill_mid_commit", 0, SETTINGS, rng)
    v = verdict(killed, ref["fingerprint"])
    assert "error" not in killed and killed["notes"][0].get("killed_at"), killed.get("error") or killed["notes"]
    # the workload's metrics rows carry wall times: everything else must be bit-identical
    assert [d for d in v["differences"] if d != "metrics"] == [], v
    assert killed["state"] == "done" and v["interruptions"] >= 1, (killed["state"], v)
    assert not killed["notes"][0].get("manifest_published_anyway"), killed["notes"]

    second = run_trial("second_writer", 0, SETTINGS, rng)
    v2 = verdict(second, ref["fingerprint"])
    assert "error" not in second, second["error"]
    # both copies need a CPU at once: on a busy cluster the copy starts after the end and finds the run done
    assert v2["faults_delivered"] == 1, f"the second copy never ran beside the first: {second['notes']}"
    assert [d for d in v2["differences"] if d != "metrics"] == [], v2
    # the older writer is fenced: its attempt ends in an error naming the fence, never in a second "done"
    errors = [e["error"] for e in second["events"] if e["ev"] == "error"]
    returns = [e for e in second["events"] if e["ev"] == "return" and e["result"] == "done"]
    assert len(returns) == 1 and any("fenced" in e for e in errors), (errors, returns)
