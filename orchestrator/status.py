"""Per-sweep status: one row per run from the durable store (newest commit), the job's state.json, squeue and,
when present, sacct. Rendered as a rich table, JSON, or `status.html` with a learning curve per run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.records import CommitExtra, RecordError
from orchestrator import oom, slurm
from orchestrator.run_state import RunState, RunStateError, read_run_state
from orchestrator.sweep import Sweep

# Slurm states in which the job may still run again; anything else has ended.
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
        "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def latest_commit(durable: str) -> dict | None:
    """The newest commit of a durable store: {commit, time, extra} of the buffer's newest manifest; None before
    the first commit, or when the store cannot be read."""
    from buffer import read_latest_manifest

    try:
        return read_latest_manifest(durable)
    except Exception:  # noqa: BLE001 - status must render whatever state a store is in
        return None


@dataclass
class RunStatus:
    """One row of `make status`."""

    run: str
    state: str  # DONE, RUNNING, PENDING, REQUEUED, STOPPED, FAILED, OOM, KILLED, CANCELLED, REQUEUE_LIMIT, NEW, ...
    reason: str = ""  # Slurm's pending reason or the last stop's cause
    requeues: int = 0
    env_steps: int | None = None
    target_steps: int | None = None
    percent: float | None = None
    commit: int | None = None
    commit_age_s: float | None = None
    last_return: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    wandb_run_id: str | None = None
    job_id: str | None = None
    cluster: str = ""
    warnings: list[str] = field(default_factory=list)


def pid_alive(pid: int | str) -> bool:
    """Whether process `pid` of this host still runs. A process of another user (EPERM) runs; a zombie (exited,
    not yet reaped by its parent) does not; 0, negatives and non-numbers are no process (os.kill would signal a
    process group)."""
    try:
        n = int(pid)
    except (TypeError, ValueError):
        return False
    if n <= 0:
        return False
    try:
        os.kill(n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{n}/stat").read_text()
    except OSError:
        return True  # no procfs (or it just ended): os.kill's answer stands
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_status(sweep: Sweep, run: str, queue: dict, acct: dict, now: float | None = None) -> RunStatus:
    """Status of one run from its files plus the given squeue/sacct rows (id -> row)."""
    now = time.time() if now is None else now
    paths = sweep.paths(run).resolved()
    cfg = sweep.config(run)
    subs = sweep.submissions(run)
    st = RunStatus(run=run, state="NEW", target_steps=cfg.train.steps)
    recorded, unreadable = None, False
    try:
        recorded = read_run_state(paths.state)
    except RunStateError as e:  # status must render whatever state a run is in; the row says why it knows less
        unreadable, st.warnings = True, [str(e)]
    # before the job's first word (or past an unreadable file): no attempts, no job state
    state = recorded or RunState(state="", updated=0.0)
    st.warnings += state.warnings
    commit, extra = latest_commit(paths.durable), None
    if commit:
        st.commit = commit.get("commit")
        st.commit_age_s = now - commit["time"] if commit.get("time") else None
        try:
            extra = CommitExtra.from_json(commit.get("extra"))
        except RecordError as e:  # status must render whatever state a store is in
            st.warnings.append(f"commit {st.commit}: {e}")
    if extra is not None:
        prog = extra.progress
        st.env_steps, st.last_return, st.steps_per_s = prog.env_steps, prog.last_return, prog.steps_per_s
        st.target_steps = prog.target_steps or st.target_steps
        st.wandb_run_id = extra.wandb_run_id
        if st.target_steps:
            st.percent = 100.0 * st.env_steps / st.target_steps
            if st.steps_per_s:
                st.eta_s = max(st.target_steps - st.env_steps, 0) / st.steps_per_s
    attempts = state.attempts
    job_ids = {a.job_id for a in attempts}
    st.requeues = max(len(attempts) - len(job_ids), sum(max(len(acct.get(j, [])) - 1, 0) for j in job_ids))
    if not subs:
        return st
    last = subs[-1]
    st.job_id, st.cluster = last["job_id"], last["cluster"]
    job_state = state.state
    last_stop = next((a.stop for a in reversed(attempts) if a.stop), "")
    if job_state == "done":
        st.state = "DONE"
    elif job_state == "requeue_limit":
        st.state, st.reason = "REQUEUE_LIMIT", f"{st.requeues} requeues >= cluster.max_requeues"
    elif st.cluster == "local":
        alive = pid_alive(last["job_id"])
        ended = {"stopped": "STOPPED", "failed": "FAILED", "out_of_memory": "OOM", "killed": "KILLED"}
        st.state = "RUNNING" if alive else ended.get(job_state, "STOPPED")
        st.reason = (state.error or "") if st.state in ("FAILED", "OOM", "KILLED") else (
            "" if alive else last_stop)
    else:
        q, rows = queue.get(last["job_id"]), acct.get(last["job_id"], [])
        slurm_state = q["state"] if q else (rows[-1]["state"] if rows else "")
        if q and slurm_state in LIVE:
            st.state = slurm_state
            st.reason = q["reason"] if q["reason"] not in ("None", "") else last_stop
        elif slurm_state == "OUT_OF_MEMORY" or job_state == "out_of_memory":
            # the step was killed without a word (or an env worker was, and the job failed): state.json learns
            # it here, from Slurm
            if slurm_state == "OUT_OF_MEMORY" and not unreadable:  # never over a file it could not read
                oom.record(paths.run_dir, "out_of_memory", oom.hint(cfg), slurm_state=slurm_state)
            after = None if unreadable else read_run_state(paths.state)
            st.state, st.reason = "OOM", after.error if after and after.error else oom.hint(cfg)
        elif job_state == "failed":
            st.state, st.reason = "FAILED", state.error or ""
        elif slurm_state:
            st.state = {"COMPLETED": "STOPPED"}.get(slurm_state, slurm_state)
            st.reason = last_stop
            if st.state != "CANCELLED" and st.requeues >= cfg.cluster.max_requeues:
                st.state, st.reason = "REQUEUE_LIMIT", f"{st.requeues} requeues >= cluster.max_requeues"
        else:  # neither squeue nor sacct know the job (ended long ago, or no accounting)
            lost = job_state in ("running", "requeued")
            st.state = "LOST" if lost else (job_state or "UNKNOWN").upper()
            st.reason = last_stop
    return st


def sweep_status(sweep: Sweep, runner: slurm.Runner = slurm.run_command) -> list[RunStatus]:
    """Rows for every run of the sweep (one squeue and one sacct call for the whole sweep)."""
    ids = sorted({s["job_id"] for r in sweep.runs for s in sweep.submissions(r) if s["cluster"] == "slurm"})
    queue = slurm.squeue(ids, runner) if ids else {}
    acct = slurm.sacct(ids, runner) if ids else {}
    return [run_status(sweep, r, queue, acct) for r in sweep.runs]


def counts(rows: list[RunStatus]) -> str:
    c = Counter(r.state for r in rows)
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items()))


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else (
        f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s")


def _num(x: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def console() -> Any:
    """The CLI's rich Console. Piped or redirected, rich would fit tables into 80 columns and cut headers and cells
    (`requ…`); there, lines are as long as the table needs, for logs and grep."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=1_000_000)


def table(sweep_name: str, rows: list[RunStatus]) -> Any:
    """A rich Table of the rows, titled with the counts per state."""
    from rich.table import Table

    t = Table(title=f"sweep {sweep_name}: {len(rows)} runs ({counts(rows)})", title_justify="left")
    for col in ("run", "state", "requeues", "progress", "last commit", "return", "steps/s", "ETA", "job",
                "wandb"):
        t.add_column(col, justify="right" if col in ("requeues", "return", "steps/s", "ETA") else "left")
    for r in rows:
        state = r.state + (f" ({r.reason})" if r.reason else "")
        prog = "-" if r.env_steps is None else str(r.env_steps)
        if r.percent is not None:
            prog = f"{r.env_steps}/{r.target_steps} ({r.percent:.1f}%)"
        commit = "-" if r.commit is None else f"#{r.commit} @{r.env_steps}, {_dur(r.commit_age_s)} ago"
        t.add_row(r.run, state, str(r.requeues), prog, commit, _num(r.last_return), _num(r.steps_per_s),
                  _dur(r.eta_s), r.job_id or "-", r.wandb_run_id or "-")
    return t


def to_json(sweep_name: str, rows: list[RunStatus]) -> str:
    return json.dumps({"sweep": sweep_name, "counts": dict(Counter(r.state for r in rows)),
                       "runs": [asdict(r) for r in rows]}, indent=1)


def read_metrics(path: Path) -> tuple[list[float], list[float]]:
    """(env_steps, episode/return) points of a metrics.jsonl, read as the sweep report reads it."""
    from orchestrator.report import read_curves

    c = read_curves(path).get("episode/return")
    return ([], []) if c is None else (c.x.tolist(), c.y.tolist())


def _curve_png(xs: list[float], ys: list[float], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 2.8), dpi=90)
    ax.plot(xs, ys, lw=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("env steps", fontsize=8)
    ax.set_ylabel("episode return", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(sweep: Sweep, rows: list[RunStatus]) -> Path:
    """`<sweep>/status.html`: the table and one learning curve (embedded PNG) per run; returns its path."""
    cells = []
    for r in rows:
        xs, ys = read_metrics(sweep.dir / r.run / "logs" / "metrics.jsonl")
        img = (f'<img src="data:image/png;base64,{_curve_png(xs, ys, r.run)}">' if xs
               else "<p>no episodes logged yet</p>")
        cells.append(f'<div class="run"><h3>{html.escape(r.run)}: {html.escape(r.state)}</h3>{img}</div>')
    head = "".join(f"<th>{h}</th>" for h in ("run", "state", "reason", "requeues", "env steps", "%",
                                             "commit", "commit age", "return", "steps/s", "ETA", "wandb"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r.run, r.state, r.reason, r.requeues, _num(r.env_steps, "{}"), _num(r.percent, "{:.1f}"),
            _num(r.commit, "{}"), _dur(r.commit_age_s), _num(r.last_return), _num(r.steps_per_s),
            _dur(r.eta_s), r.wandb_run_id or "-")) + "</tr>" for r in rows)
    report = sweep.dir / "report.html"
    link = (f"<a href='report.html'>sweep report</a> (curves across seeds per config group, final scores; "
            f"made {time.strftime('%Y-%m-%d %H:%M', time.localtime(report.stat().st_mtime))}, "
            f"remake it with <code>make report SWEEP={html.escape(sweep.name)}</code>)" if report.exists()
            else f"no sweep report yet: <code>make report SWEEP={html.escape(sweep.name)}</code> writes "
                 "report.html here")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(sweep.name)}</title>"
            "<style>body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
            "padding:2px 6px;font-size:13px} .run{display:inline-block;margin:6px}</style></head><body>"
            f"<h2>sweep {html.escape(sweep.name)}: {html.escape(counts(rows))}</h2>"
            f"<p>{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p><p id='report'>{link}</p>"
            f"<table><tr>{head}</tr>{body}</table>"
            f"<h2>learning curves</h2>{''.join(cells)}</body></html>")
    out = sweep.dir / "status.html"
    out.write_text(page)
    return out
