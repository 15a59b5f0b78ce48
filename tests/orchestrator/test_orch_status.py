"""Status rows, JSON and HTML from real durable stores written by the test workload (Slurm rows given)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from orchestrator.compose import compose_runs
from orchestrator.config import REPO_ROOT, agent_run_config
from orchestrator.status import pid_alive, read_metrics, run_status, table, to_json, write_html
from orchestrator.sweep import Request, create_sweep
from tests.orchestrator import orch_workload
from tests.orchestrator.orch_workload import WORKLOAD
from tests.orchestrator.run_states import attempt, write_state


def run_workload(sweep, run: str, stop_after: int | None) -> None:
    """Run the real workload in-process; stop (with a commit) after `stop_after` step boundaries."""
    paths = sweep.paths(run).resolved()
    paths.logs.mkdir(parents=True, exist_ok=True)
    calls = iter(range(10**9))
    ctx = SimpleNamespace(scratch_dir=paths.scratch, durable_url=paths.durable, log_dir=str(paths.logs),
                          writer_token=f"t-{run}",
                          should_stop=lambda: stop_after is not None and next(calls) >= stop_after)
    orch_workload.train(agent_run_config(sweep.config(run)), ctx)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = compose_runs("smoke", [0, 1, 2], f"train.steps=200 train.log_every=20 run.entry={WORKLOAD} "
                        f"run.root={root} cluster.max_requeues=2", "dev")
    s = create_sweep(root, "st", Request("smoke", [0, 1, 2], [], "dev"), runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("R2I_TEST_STEP_S", "0")
        run_workload(s, "s0", None)
        run_workload(s, "s1", 120)
    write_state(s.dir / "s0", "done", attempt("11", 0), attempt("11", 1, stop="timeout"))
    write_state(s.dir / "s1", "requeued", attempt("12", 0, stop="preempted"), warnings=("w1",))
    s.record_submission("s0", "11", "slurm")
    s.record_submission("s1", "12", "slurm")
    return s


QUEUE = {"12": {"state": "PENDING", "reason": "BeginTime", "time_left": "1:00"}}
ACCT = {"11": [{"state": "REQUEUED"}, {"state": "COMPLETED"}],
        "12": [{"state": "REQUEUED"}, {"state": "PENDING"}]}


def test_rows_from_durable_state_and_slurm(sweep):
    now = time.time()
    s0, s1, s2 = (run_status(sweep, r, QUEUE, ACCT, now) for r in ("s0", "s1", "s2"))
    assert (s0.state, s0.requeues, s0.env_steps, s0.target_steps, s0.percent) == ("DONE", 1, 200, 200, 100.0)
    assert s0.commit is not None and 0 <= s0.commit_age_s < 120 and s0.wandb_run_id.startswith("bandit-0-")
    assert s0.last_return == json.loads((sweep.dir / "s0/logs/final_learner.json").read_text())["last_return"]
    assert (s1.state, s1.reason, s1.requeues) == ("PENDING", "BeginTime", 1)
    assert (s1.env_steps, s1.job_id) == (120, "12")
    assert s1.percent == 60.0 and s1.eta_s is not None and s1.warnings == ["w1"]
    assert (s2.state, s2.env_steps, s2.commit, s2.target_steps) == ("NEW", None, None, 200)


def test_ended_job_states_without_squeue(sweep):
    assert run_status(sweep, "s1", {}, {"12": [{"state": "CANCELLED"}]}).state == "CANCELLED"
    # a job that ended (killed, not requeued) after max_requeues: a clear final state
    acct = {"12": [{"state": "REQUEUED"}, {"state": "REQUEUED"}, {"state": "FAILED"}]}
    row = run_status(sweep, "s1", {}, acct)
    assert (row.state, row.requeues) == ("REQUEUE_LIMIT", 2)
    # neither squeue nor sacct know the job (no accounting, job aged out): not silently RUNNING
    assert run_status(sweep, "s1", {}, {}).state == "LOST"


def test_table_json_and_html(sweep):
    rows = [run_status(sweep, r, QUEUE, ACCT) for r in sweep.runs]
    console = Console(record=True, width=200)
    console.print(table("st", rows))
    text = console.export_text()
    assert "sweep st: 3 runs (1 DONE, 1 NEW, 1 PENDING)" in text and "PENDING (BeginTime)" in text
    assert "120/200 (60.0%)" in text
    data = json.loads(to_json("st", rows))
    assert data["counts"] == {"DONE": 1, "PENDING": 1, "NEW": 1} and data["runs"][1]["requeues"] == 1
    page = write_html(sweep, rows).read_text()
    assert page.count("data:image/png;base64,") == 2 and "no episodes logged yet" in page


def test_pid_alive_counts_running_processes_only():
    import os

    assert pid_alive(os.getpid()) and pid_alive(str(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline and open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not pid_alive(child.pid), "an exited child that is not reaped yet (a zombie) does not run"
    child.wait()
    assert not pid_alive(child.pid)
    # 0 and negatives would address process groups (always "alive"); a job id that is no pid is no process
    assert not any(pid_alive(p) for p in (0, -1, "0", "", "12345.0", None))


def test_metrics_reader_skips_cut_lines(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"env_steps": 10, "episode/return": 1.5}\n{"env_steps": 20, "loss": 3}\n{"env_st')
    assert read_metrics(f) == ([10.0], [1.5])


def test_piped_status_keeps_every_header_and_cell_whole(tmp_path):
    """`make status | tee` or `> file`: rich sees no terminal, and must not cut headers or cells to fit 80 (or
    any other) columns; a long failure reason is the widest cell a real table has."""
    root = tmp_path / "runs"
    runs = compose_runs("smoke", [3], f"run.root={root}", "local")
    s = create_sweep(root, "piped", Request("smoke", [3], [], "local"), runs)
    error = "RuntimeError: " + " ".join(f"the replay store at /scratch/piped/s3 said no ({i})" for i in range(6))
    write_state(s.dir / "s3", "failed", attempt("999999999", 0, cluster="local"), error=error)
    s.record_submission("s3", "999999999", "local")  # no such pid: the job has ended
    out = subprocess.run([sys.executable, "-m", "orchestrator", "--root", str(root), "status", "--sweep", "piped"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # pipes
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if "run" in line and "state" in line and "┃" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert cells == ["run", "state", "requeues", "progress", "last commit", "return", "steps/s", "ETA", "job",
                     "wandb"], out.stdout
    (row,) = [line for line in lines if line.startswith("│ s3")]
    assert f"FAILED ({error})" in row and "999999999" in row
    assert "…" not in out.stdout
