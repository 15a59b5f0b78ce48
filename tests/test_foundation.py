"""The foundation's own contracts: make targets, the dev-cluster scripts' error paths."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "slurm" / "dev-cluster"
REQUIRED_TARGETS = ["setup", "test", "test-slurm", "cluster-up", "cluster-down", "submit", "status", "bench",
                    "lint", "clean"]


def test_make_help_lists_every_target_with_a_line() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    described = dict(re.findall(r"make (\S+)\s+(.+)", out))
    for target in REQUIRED_TARGETS:
        assert described.get(target, "").strip(), f"`make help` has no line for {target}:\n{out}"


@pytest.mark.parametrize("script", ["up.sh", "down.sh", "common.sh"])
def test_dev_cluster_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(DEV / script)], check=True)


def _common(snippet: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source {DEV / 'common.sh'}; {snippet}"], capture_output=True, text=True)


def test_busy_port_is_named_with_its_setting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _common(f"step 'starting slurmctld'; port_free {port} LOCAL_SLURM_CTLD_PORT")
    assert res.returncode == 1
    assert f"port {port} is already in use" in res.stderr and "LOCAL_SLURM_CTLD_PORT" in res.stderr, res.stderr
    assert "(starting slurmctld)" in res.stderr, "the error must name the step that failed"


def test_failed_daemon_prints_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "slurmd.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)) + "fatal: Unable to bind listen port\n")
    res = _common(f"step 'starting slurmd'; fail_with_log 'slurmd did not start' {log}")
    assert res.returncode == 1
    assert "fatal: Unable to bind listen port" in res.stderr and "line 10" not in res.stderr
    assert f"slurmd did not start (log: {log})" in res.stderr


def test_wait_for_names_what_it_waited_for() -> None:
    res = _common("wait_for 'node vm to be idle' 1 false")
    assert res.returncode == 1 and "waiting for node vm to be idle" in res.stderr


def test_slurm_conf_template_has_preemption_and_fast_requeue() -> None:
    conf = (DEV / "slurm.conf.in").read_text()
    for needle in ["PreemptMode=REQUEUE", "preempt_send_user_signal", "JobRequeue=1", "cred_expire=10",
                   "PartitionName=low", "PartitionName=high", "ProctrackType=proctrack/pgid"]:
        assert needle in conf, needle
    assert not re.search(r"@[A-Z_]+@", re.sub(r"@(MARK|BASE|HOST|CTLD_PORT|SLURMD_PORT|DBD_PORT|CPUS|SOCKETS|CORES"
                                              r"|THREADS|MEM)@", "", conf)), "unknown placeholder in template"
