"""Attempts killed for memory: recognised, recorded in `state.json` as `out_of_memory`, and not run again as is.

Slurm says so itself (job state OUT_OF_MEMORY; the sbatch teardown then does not requeue, see slurm.py). A local
job has no such verdict: it runs under this module's watcher (`python -m orchestrator.oom RUN_DIR COMMAND...`,
the command submitit's local controller starts), which reads the kernel's count of OOM kills before and after the
job. A job that ended by SIGKILL, or failed (an env worker killed under it), while that count grew is recorded as
out_of_memory; a SIGKILL without it as killed. Neither exits with the local requeue status.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from orchestrator.config import RootConfig, load_run_config
from orchestrator.job import LOCAL_REQUEUE_EXIT
from orchestrator.run_state import RunState, read_run_state, write_run_state

VMSTAT = Path("/proc/vmstat")


def cgroup_oom_files(proc_cgroup: Path = Path("/proc/self/cgroup"), base: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """This process's memory cgroup counters that hold `oom_kill N`: v1 memory.oom_control, v2 memory.events."""
    out = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            out.append(base / "memory" / path.lstrip("/") / "memory.oom_control")
        elif controllers == "":
            out.append(base / path.lstrip("/") / "memory.events")
    return out


def oom_kill_count(files: Sequence[Path] | None = None) -> int | None:
    """The kernel's count of OOM kills from the first readable counter: this process's memory cgroup (any kind
    of OOM killer counts there), else the machine's /proc/vmstat. None where no counter is readable."""
    for f in (list(files) if files is not None else cgroup_oom_files() + [VMSTAT]):
        try:
            for line in Path(f).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def hint(cfg: RootConfig) -> str:
    """What to change, in one line. train.num_envs is part of the trajectory: fewer envs is a new sweep."""
    c, n = cfg.cluster, cfg.train.num_envs
    if c.kind == "slurm":
        now = f"now {c.mem_gb:g}" if c.mem_gb else "unset: the partition's default"
        fix = f"raise cluster.mem_gb ({now}; in the run's config.yaml, then make resume)"
    else:
        fix = "free memory on this machine (then make resume)"
    return f"killed for memory, not requeued: {fix} or lower train.num_envs={n} (a new sweep)"


def record(run_dir: Path, outcome: str, reason: str, pid: int | None = None, **facts) -> bool:
    """Mark the attempt of `pid` (else the last one) as ended by `outcome` ("out_of_memory" | "killed") in
    state.json, unless it is already; False when there was nothing to change. `facts`: the Attempt fields the
    verdict rests on (exit, oom_kills, slurm_state)."""
    path = Path(run_dir) / "state.json"
    state = read_run_state(path)
    if state is not None and state.state in (outcome, "done"):
        return False
    now = time.time()
    if state is None:  # killed before the job wrote its first word
        state = RunState(state=outcome, updated=now)
    found = [i for i, a in enumerate(state.attempts) if pid is None or a.pid == pid]
    if found:
        attempt = state.attempts[found[-1]]
        if attempt.outcome not in (None, "failed"):
            return False  # it ended on its own terms (stopped, done, requeued) before it was killed
        state = state.with_attempt(found[-1], end=attempt.end or now, outcome=outcome, **facts)
    error = reason + (f" ({state.error})" if state.error else "")
    write_run_state(path, replace(state, state=outcome, error=error, updated=now))
    return True


def supervise(run_dir: str | Path, command: list[str], counter: Sequence[Path] | None = None) -> int:
    """Run `command` (the job) as a child, forward the stop signals, classify its end; returns the exit status
    to pass on (128 + signal for a killed child, as a shell reports it)."""
    before = oom_kill_count(counter)
    child = subprocess.Popen(command)  # inherits the signal mask and dispositions the job relies on

    def forward(signum, frame):
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        rc = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    after = oom_kill_count(counter)
    oom = before is not None and after is not None and after > before
    if rc not in (0, LOCAL_REQUEUE_EXIT) and (oom or rc == -signal.SIGKILL):
        try:
            cfg = load_run_config(Path(run_dir) / "config.yaml")
            why = hint(cfg) if oom else "killed by SIGKILL (not by the kernel's OOM killer)"
        except Exception as e:  # noqa: BLE001 - the verdict must be recorded even when the config is unreadable
            why = f"killed ({type(e).__name__} reading the config)"
        outcome = "out_of_memory" if oom else "killed"
        record(Path(run_dir), outcome, why, pid=child.pid, exit=rc, oom_kills=(before, after))
        print(f"[r2i] job {child.pid} {outcome}: {why}", file=sys.stderr, flush=True)
    return 128 - rc if rc < 0 else rc


def watch_command(run_dir: str | Path, python: str = sys.executable) -> str:
    """What submitit's local executor is given as `python`: this watcher around the interpreter."""
    return shlex.join([python, "-m", "orchestrator.oom", str(run_dir), python])


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1], sys.argv[2:]))
