"""A run whose durable store is on S3 (the moto server of tests/s3_server.py), end to end through the CLI and the
local executor: Ctrl-C commits to the bucket, the same command resumes from it to the uninterrupted result, and
status reads the progress from it; a bucket that does not exist submits nothing."""

from __future__ import annotations

import sys

from orchestrator.cli import main
from orchestrator.status import latest_commit
from tests.orchestrator.orch_workload import WORKLOAD
from tests.orchestrator.test_orch_local_e2e import ctrl_c_after_first_rows, same_command_resumes_to_the_end

CLI = [sys.executable, "-m", "orchestrator"]


def submit_cmd(root, durable: str, steps: int) -> list[str]:
    return CLI + ["submit", "--exp", "smoke", "--seeds", "5", "--sweep", "e2e", "--cluster", "local", "--args",
                  f"train.steps={steps} train.log_every=25 run.entry={WORKLOAD} run.root={root} "
                  f"cluster.durable={durable}"]


def test_a_run_on_s3_stops_with_a_commit_and_resumes_from_the_bucket(root, s3_url, monkeypatch):
    monkeypatch.setenv("R2I_TEST_STEP_S", "0.01")
    run, durable = root / "e2e" / "s5", f"{s3_url}/e2e/s5"
    out, returncode = ctrl_c_after_first_rows(submit_cmd(root, s3_url, 600), run)
    assert returncode == 0, out
    assert "stopping at the next step boundary" in out, out
    assert not (run / "durable").exists()  # every commit went to the bucket
    steps = latest_commit(durable)["extra"]["progress"]["env_steps"]
    assert 0 < steps < 600

    row = same_command_resumes_to_the_end(submit_cmd(root, s3_url, 600), root, run)
    assert (row["state"], row["env_steps"]) == ("DONE", 600)


def test_a_missing_bucket_is_named_and_nothing_is_submitted(root, s3_endpoint, capsys):
    assert main(["submit", "--cluster", "local", "--exp", "smoke", "--args",
                 "cluster.durable=s3://no-such-bucket/sweeps"]) == 2
    err = capsys.readouterr().err
    assert "bucket 'no-such-bucket' does not exist" in err and err.count("\n") <= 1, err
    assert not root.exists() or not any(root.iterdir())
