"""Slurm facts and commands: why a job stopped, what squeue/sacct/sinfo say, and the sbatch script we submit.

Every Slurm command goes through a `Runner` (argv -> stdout) or a PATH lookup, where tests fake it. Timeout
and preemption are told apart from Slurm's own facts (PreemptTime, the attempt's end time, JobState), never
from a wall-clock heuristic like submitit's (which calls every signal of a job shorter than 50 min a timeout).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from orchestrator.config import ClusterConfig, OrchestratorError

Runner = Callable[[list[str]], str]

REQUEUE_EXIT = 75  # the job's "requeue me" status; the host side (sbatch teardown) runs `scontrol requeue`
# slurmctld checks --signal and time limits on a 30 s timer (PERIODIC_TIMEOUT): USR2 arrives between
# `grace` and `grace + 30` s before the limit; SLACK covers a slow commit before the facts are read.
SIGNAL_TIMER_S = 30
SLACK_S = 15


class SlurmError(OrchestratorError):
    """A Slurm command failed or Slurm refuses what the profile asks for."""


def run_command(argv: list[str], timeout: float = 30) -> str:
    """Run a Slurm command; its stdout, or SlurmError naming the command and its stderr."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"`{shlex.join(argv)}` failed: {e}") from e
    if out.returncode != 0:
        raise SlurmError(f"`{shlex.join(argv)}` exited {out.returncode}: {out.stderr.strip()[:300]}")
    return out.stdout


def have_slurm() -> bool:
    return shutil.which("sbatch") is not None


# ----------------------------------------------------------------------------------------------------- facts


def parse_time(value: str | None) -> float | None:
    """Slurm's `2026-11-21T20:30:00` (local time) or epoch seconds as epoch seconds; None/Unknown as None."""
    if not value or value in ("None", "Unknown", "N/A", "(null)"):
        return None
    if value.isdigit():
        return float(value)
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` (one `Key=Value` line per job) as a dict of its first job."""
    line = next((ln for ln in text.splitlines() if "JobId=" in ln), "")
    return dict(re.findall(r"(\w[\w:/]*)=(\S*)", line))


@dataclass(frozen=True)
class SlurmFacts:
    """What Slurm says about the running attempt at the moment the job was asked to stop."""

    job_id: str
    restart_count: int  # SLURM_RESTART_COUNT: requeues so far
    end_time: float | None  # epoch s of this attempt's time limit
    state: str | None = None  # JobState (RUNNING, CANCELLED, ...)
    preempt_time: float | None = None  # set once Slurm decided to preempt the job
    reason: str | None = None
    slurm_restarts: int | None = None  # scontrol's Restarts: one ahead of restart_count once Slurm requeued it


def facts_from(env: Mapping[str, str], scontrol_text: str = "") -> SlurmFacts:
    """Facts from the job's environment and, when there is one, `scontrol show job -o` output."""
    sc = parse_scontrol(scontrol_text)
    end = parse_time(env.get("SLURM_JOB_END_TIME")) or parse_time(env.get("R2I_JOB_END_TIME"))
    return SlurmFacts(
        job_id=env.get("SLURM_JOB_ID", sc.get("JobId", "")),
        # Slurm sets SLURM_RESTART_COUNT only from the first requeue on; scontrol's Restarts may already count
        # a requeue in progress, so it is not a stand-in
        restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
        end_time=parse_time(sc.get("EndTime")) or end,
        state=sc.get("JobState"),
        preempt_time=parse_time(sc.get("PreemptTime")),
        reason=sc.get("Reason"),
        slurm_restarts=int(sc["Restarts"]) if sc.get("Restarts", "").isdigit() else None,
    )


def gather_facts(env: Mapping[str, str], facts_file: str | None = None, runner: Runner = run_command,
                 wait_s: float = 3.0) -> SlurmFacts:
    """Facts as seen now: `scontrol` when it is on PATH, else the file the host-side step wrapper wrote on the
    signal (inside a container there is no scontrol), else the environment alone."""
    text = ""
    if shutil.which("scontrol") and env.get("SLURM_JOB_ID"):
        try:
            text = runner(["scontrol", "show", "job", "-o", env["SLURM_JOB_ID"]])
        except SlurmError:
            text = ""
    elif facts_file:
        deadline = time.time() + wait_s  # the wrapper writes it when the signal lands; give it a moment
        while not Path(facts_file).exists() and time.time() < deadline:
            time.sleep(0.1)
        text = Path(facts_file).read_text() if Path(facts_file).exists() else ""
    return facts_from(env, text)


STOP_KINDS = ("timeout", "preempted", "requeued", "cancelled", "interrupted", "user_stop")


def classify_stop(signal_name: str | None, signal_time: float, facts: SlurmFacts, grace_s: int) -> str:
    """Why a Slurm job was asked to stop, from Slurm's facts.

    preempted: PreemptTime is set; requeued: SIGTERM after `scontrol requeue` (Slurm already counted the
    restart, and requeues the job itself); cancelled: any other SIGTERM (scancel; JobState COMPLETING or
    CANCELLED); timeout: a USR2 within the --signal window before the attempt's end time; interrupted: any
    other USR2 (e.g. `scancel --signal USR2`).
    """
    if facts.preempt_time is not None or (facts.state or "").startswith("PREEMPT"):
        return "preempted"
    if (facts.state or "").startswith("CANCELLED"):
        return "cancelled"
    if signal_name == "SIGTERM":
        if facts.state is None or (facts.slurm_restarts or 0) > facts.restart_count:
            return "requeued"  # (no facts at all: let the host try; it cannot requeue a cancelled job)
        return "cancelled"
    if facts.end_time is not None and facts.end_time - signal_time <= grace_s + SIGNAL_TIMER_S + SLACK_S:
        return "timeout"
    return "interrupted"


# ----------------------------------------------------------------------------------------- queue queries


def squeue(job_ids: list[str], runner: Runner = run_command) -> dict[str, dict[str, str]]:
    """Live (and recently ended, within MinJobAge) jobs: id -> {state, reason, time_left}."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    try:
        out = runner(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%L"])
    except SlurmError:
        return {}
    rows = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            rows[parts[0]] = {"state": parts[1], "reason": parts[2], "time_left": parts[3]}
    return rows


def sacct(job_ids: list[str], runner: Runner = run_command) -> dict[str, list[dict[str, str]]]:
    """Every incarnation of each job (`sacct -D -X`): id -> [{state, exit_code, elapsed}], oldest first.
    Empty when sacct is missing or accounting is off."""
    if not job_ids or not shutil.which("sacct"):
        return {}
    try:
        out = runner(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(job_ids), "-o",
                      "JobID,State,ExitCode,Elapsed"])
    except SlurmError:
        return {}
    rows: dict[str, list[dict[str, str]]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 4:
            rows.setdefault(parts[0], []).append(
                {"state": parts[1].split()[0], "exit_code": parts[2], "elapsed": parts[3]})
    return rows


def partitions(runner: Runner = run_command) -> list[str]:
    """Partition names `sinfo` knows (the default one without its `*`)."""
    return sorted({p.strip().rstrip("*") for p in runner(["sinfo", "-h", "-o", "%P"]).split() if p.strip()})


def cancel(job_ids: list[str], runner: Runner = run_command) -> None:
    if job_ids:
        runner(["scancel", *job_ids])


# ----------------------------------------------------------------------------------------- sbatch script

STEP_WRAPPER = Path(__file__).with_name("step.sh")


def container_prefix(c: ClusterConfig, binds: list[str]) -> list[str]:
    """`singularity exec --nv --bind a,b image.sif python` (empty when the profile names no image)."""
    if not c.container.image:
        return []
    argv = [c.container.runtime, "exec"] + (["--nv"] if c.container.nv else [])
    all_binds = sorted({b for b in binds + list(c.container.binds) if b})
    if all_binds:
        argv += ["--bind", ",".join(all_binds)]
    return argv + [c.container.image, c.container.python]


OOM_CHECK = [
    "# killed for memory: the job's memory cgroup counted an OOM kill, or sacct says OUT_OF_MEMORY (it may lag)",
    "r2i_oom() {",
    "  local f i",
    "  for f in $(awk -F: -v j=\"/job_${SLURM_JOB_ID:-0}/\" '{ i = index($3 \"/\", j); if (!i) next;"
    " p = substr($3, 1, i + length(j) - 2); if ($2 == \"\") print \"/sys/fs/cgroup\" p \"/memory.events\";"
    " else if ($2 ~ /(^|,)memory(,|$)/) print \"/sys/fs/cgroup/memory\" p \"/memory.oom_control\" }'"
    " /proc/self/cgroup 2>/dev/null); do",
    "    awk '$1 == \"oom_kill\" && $2 > 0 { hit = 1 } END { exit !hit }' \"$f\" 2>/dev/null && return 0",
    "  done",
    "  command -v sacct >/dev/null || return 1",
    "  for i in 1 2 3; do",
    '    sacct -n -P -j "$SLURM_JOB_ID" -o JobID,State 2>/dev/null | grep -q "|OUT_OF_MEMORY" && return 0',
    "    sleep 1",
    "  done",
    "  return 1",
    "}",
]


def teardown_lines(max_requeues: int) -> list[str]:
    """Runs in the batch shell on the host after the step: requeue on the job's request or a killed step, unless
    it was killed for memory (it would die the same way again)."""
    return [
        "r2i_rc=$?",
        *OOM_CHECK,
        "# 75: the job committed and asks for a requeue; >= 128: the step was killed (resume from a commit)",
        f'if [ "$r2i_rc" -eq {REQUEUE_EXIT} ] || [ "$r2i_rc" -ge 128 ]; then',
        '  if [ "$r2i_rc" -ge 128 ] && r2i_oom; then',
        '    echo "r2i: job $SLURM_JOB_ID was killed for memory (OUT_OF_MEMORY), not requeueing: raise cluster.mem_gb'
        ' (the run config.yaml, then make resume) or lower train.num_envs (a new sweep)"',
        f'  elif [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ]; then',
        '    echo "r2i: requeueing job $SLURM_JOB_ID (step exit $r2i_rc)"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "  else",
        f'    echo "r2i: requeue limit {max_requeues} reached, not requeueing (step exit $r2i_rc)"',
        "  fi",
        "fi",
        'exit "$r2i_rc"',
    ]


def sbatch_parameters(c: ClusterConfig, job_name: str, wrapper: str, facts_dir: str,
                      binds: list[str], python: str) -> tuple[dict, str]:
    """(SlurmExecutor parameters, the `python` command submitit puts after srun) for one run."""
    params: dict = {
        "job_name": job_name,
        "time": c.time_min,
        "cpus_per_task": c.cpus,
        "signal_delay_s": c.signal_grace_s,
        "stderr_to_stdout": True,
        "setup": list(c.setup) or None,
        "teardown": teardown_lines(c.max_requeues),
        # requeue must be allowed even where the cluster's JobRequeue default is 0
        "additional_parameters": {"requeue": True, **c.sbatch},
    }
    for key, value in (("partition", c.partition), ("qos", c.qos), ("account", c.account),
                       ("constraint", c.constraint)):
        if value:
            params[key] = value
    if c.gpus:
        params["gpus_per_node"] = c.gpus
    if c.mem_gb:
        params["mem"] = f"{int(c.mem_gb)}GB" if c.mem_gb == int(c.mem_gb) else f"{int(c.mem_gb * 1024)}MB"
    inner = container_prefix(c, binds) or [python]
    command = shlex.join(["bash", wrapper, facts_dir, *inner])
    return params, command


def render_sbatch(params: dict, python_command: str, folder: str) -> str:
    """The sbatch script submitit would write for these parameters (for review and the golden test)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python_command} -u -m submitit.core._submit {shlex.quote(folder)}"
    return _make_sbatch_string(command=command, folder=folder, **params)
