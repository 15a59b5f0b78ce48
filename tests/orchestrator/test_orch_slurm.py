"""Slurm facts, stop classification, queue parsing and the sbatch script (subprocess boundary faked)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from orchestrator import slurm
from orchestrator.config import ClusterConfig, ContainerConfig

GOLDEN = Path(__file__).parent / "golden"


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


SCONTROL = ("JobId=42 JobName=r2i:demo/s0 UserId=root(0) GroupId=root(0) Priority=1 Nice=0 Account=(null) "
            "QOS=(null) JobState={state} Reason={reason} Dependency=(null) Requeue=1 Restarts=2 BatchFlag=1 "
            "Reboot=0 ExitCode=0:0 RunTime=00:00:40 TimeLimit=00:01:00 TimeMin=N/A "
            "SubmitTime=2026-11-21T20:00:00 EligibleTime=2026-11-21T20:00:00 AccrueTime=Unknown "
            "StartTime=2026-11-21T20:00:00 EndTime=2026-11-21T20:01:00 Deadline=N/A "
            "PreemptEligibleTime=2026-11-21T20:00:00 PreemptTime={preempt} SuspendTime=None SecsPreSuspend=0 "
            "Partition=low AllocNode:Sid=vm:123 NodeList=vm")


def facts(state="RUNNING", preempt="None", reason="None", restart="2"):
    return slurm.facts_from({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": restart},
                            SCONTROL.format(state=state, preempt=preempt, reason=reason))


def test_scontrol_line_is_parsed_into_facts():
    f = facts(preempt="2026-11-21T20:00:20")
    assert f == slurm.SlurmFacts(job_id="42", restart_count=2, end_time=_ts("2026-11-21T20:01:00"),
                                 state="RUNNING", preempt_time=_ts("2026-11-21T20:00:20"), reason="None",
                                 slurm_restarts=2)


def test_end_time_from_environment_when_there_is_no_scontrol():
    env = {"SLURM_JOB_ID": "7", "R2I_JOB_END_TIME": "2026-11-21T20:01:00"}
    assert slurm.facts_from(env).end_time == _ts("2026-11-21T20:01:00")
    assert slurm.facts_from({**env, "SLURM_JOB_END_TIME": "1795300000"}).end_time == 1795300000.0


END = _ts("2026-11-21T20:01:00")


@pytest.mark.parametrize("signal_name, at, f, grace, kind", [
    # USR2 inside the --signal window (grace 15 s + the 30 s timer): the time limit
    ("SIGUSR2", END - 40, facts(), 15, "timeout"),
    ("SIGUSR2", END - 15, facts(), 15, "timeout"),
    # the same signal before the window is not a timeout (submitit calls it one in any job under 50 min)
    ("SIGUSR2", END - 61, facts(), 15, "interrupted"),
    # PreemptTime set: preemption, even inside the timeout window
    ("SIGUSR2", END - 20, facts(preempt="2026-11-21T20:00:40"), 15, "preempted"),
    # SIGTERM: after `scontrol requeue` Slurm's Restarts is already one ahead of SLURM_RESTART_COUNT ...
    ("SIGTERM", END - 50, facts(state="COMPLETING", restart="1"), 15, "requeued"),
    # ... after scancel it is not (measured on the dev cluster: JobState=COMPLETING in both cases)
    ("SIGTERM", END - 50, facts(state="COMPLETING"), 15, "cancelled"),
    ("SIGTERM", END - 50, facts(state="CANCELLED"), 15, "cancelled"),
    ("SIGTERM", END - 50, slurm.SlurmFacts("1", 0, None), 15, "requeued"),
    # no end time known (no scontrol, no squeue): not a timeout
    ("SIGUSR2", END - 20, slurm.SlurmFacts("1", 0, None), 15, "interrupted"),
])
def test_stop_is_classified_from_slurm_facts(signal_name, at, f, grace, kind):
    assert slurm.classify_stop(signal_name, at, f, grace) == kind


def test_facts_come_from_the_wrapper_file_inside_a_container(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol, as inside an image
    f = tmp_path / "facts-42-2.txt"
    f.write_text("Signal=SIGUSR2 SignalTime=1795300000\n" + SCONTROL.format(
        state="RUNNING", reason="None", preempt="2026-11-21T20:00:40") + "\n")
    got = slurm.gather_facts({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "2"}, str(f), wait_s=0)
    assert got.preempt_time == _ts("2026-11-21T20:00:40") and got.restart_count == 2


def test_facts_come_from_scontrol_when_it_is_on_path(fake_bin):
    fake_bin("scontrol", f'echo "{SCONTROL.format(state="CANCELLED", reason="None", preempt="None")}"')
    got = slurm.gather_facts({"SLURM_JOB_ID": "42"}, None)
    assert got.state == "CANCELLED" and (got.restart_count, got.slurm_restarts) == (0, 2)


def test_squeue_and_sacct_rows_are_parsed(fake_bin):
    fake_bin("squeue", 'echo "12|PENDING|BeginTime|1:00"; echo "13|RUNNING|None|0:31"')
    fake_bin("sacct", 'echo "12|REQUEUED|0:0|00:00:40"; echo "12|PENDING|0:0|00:00:00"; '
                      'echo "13|CANCELLED by 0|0:0|00:00:03"')
    assert slurm.squeue(["12", "13"]) == {
        "12": {"state": "PENDING", "reason": "BeginTime", "time_left": "1:00"},
        "13": {"state": "RUNNING", "reason": "None", "time_left": "0:31"}}
    rows = slurm.sacct(["12", "13"])
    assert [r["state"] for r in rows["12"]] == ["REQUEUED", "PENDING"]
    assert rows["13"][0]["state"] == "CANCELLED"


def test_sacct_without_accounting_gives_nothing(fake_bin):
    fake_bin("sacct", 'echo "Slurm accounting storage is disabled" >&2; exit 1')
    assert slurm.sacct(["12"]) == {}


PROFILE = ClusterConfig(kind="slurm", partition="low", qos="normal", account="proj", constraint="epyc",
                        time_min=10, cpus=2, gpus=1, mem_gb=7.5, signal_grace_s=30, max_requeues=5,
                        setup=["module load apptainer"], sbatch={"exclude": "node1"},
                        container=ContainerConfig(image="/images/r2i.sif", binds=["/data"]))


@pytest.mark.parametrize("name, profile", [
    ("sbatch_container.txt", PROFILE), ("sbatch_plain.txt", ClusterConfig(kind="slurm", partition="low"))])
def test_generated_sbatch_script_matches_the_golden_file(name, profile):
    folder = "/sweeps/demo/s0/logs/slurm"
    params, python = slurm.sbatch_parameters(profile, "r2i:demo/s0", "/sweeps/demo/.r2i/step.sh", folder,
                                             ["/sweeps", "/scratch/r2i"], "/venv/bin/python")
    text = slurm.render_sbatch(params, python, folder)
    record = GOLDEN / name
    if not record.exists():
        record.write_text(text)
    assert text == record.read_text(), (
        f"the generated sbatch script differs from {record}; delete that file to regenerate it if the change "
        "is intended, and review the diff")


def test_partitions_strip_the_default_marker(fake_bin):
    fake_bin("sinfo", 'printf "low*\\nhigh\\n"')
    assert slurm.partitions() == ["high", "low"]
