"""The figures of a chaos trial, from its record alone (no cluster): bit-identical or not, committed steps lost,
env steps redone, restart and stop-commit times. `python -m bench.chaos --summarize-only` recomputes them for a
result file, so this reads records written by every earlier version of the harness."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.verify import differences


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by SIGKILL
    return out


def compact_events(events: list[dict]) -> list[dict]:
    """Every event but the per-step ones, of which each attempt keeps its first and last: all `verdict` reads
    (a trial logs one per loop iteration, megabytes per result file otherwise)."""
    last: dict[str, int] = {}
    for i, e in enumerate(events):
        if e["ev"] == "step":
            last[e["token"]] = i
    seen: set[str] = set()
    out = []
    for i, e in enumerate(events):
        if e["ev"] == "step":
            if e["token"] in seen and last[e["token"]] != i:
                continue
            seen.add(e["token"])
        out.append(e)
    return out


def verdict(record: dict, reference: dict) -> dict:
    """Per-trial figures: identical, corrupt restore, lost/redone env steps, restart and stop-commit times."""
    attempts: dict[str, dict] = {}
    for e in record["events"]:
        a = attempts.setdefault(e["token"], {"token": e["token"], "steps": 0})
        if e["ev"] == "entry":
            a.update(entry=e["t"], proc_start=e["proc_start"], num_envs=e["num_envs"],
                     logs_resume=e.get("logs_resume", True))
        elif e["ev"] == "step":
            a["steps"] = e["n"] - 1
            a.setdefault("first_step", e["t"])
        elif e["ev"] == "resumed":
            a.update(restored=e["env_steps"], resumed=e["t"])
        elif e["ev"] == "stopped":
            a["stopped_at"] = e["env_steps"]
        elif e["ev"] == "stop_seen":
            a.update(stop_seen=e["t"], signal_time=e.get("signal_time"))
        elif e["ev"] == "return":
            a.update(returned=e["t"], result=e["result"])
        elif e["ev"] == "error":
            a["error"] = e["error"]
    order = sorted((a for a in attempts.values() if "entry" in a), key=lambda a: a["entry"])
    lost = redone = 0
    restart_s, resume_s, commit_s, signal_s = [], [], [], []
    for i, a in enumerate(order):
        start = a.get("restored", 0)
        a["reached"] = a.get("stopped_at", start + a["steps"] * a["num_envs"])
        if i and "restored" in a:
            redone += max(0, order[i - 1]["reached"] - a["restored"])
            before = [c[1] for c in record["commits"] if c[0] < a["entry"]]
            lost += max(0, max(before, default=0) - a["restored"])
            if "first_step" in a:
                restart_s.append(a["first_step"] - a["proc_start"])
            resume_s.append(a["resumed"] - a["entry"])  # envs, learner and buffer restore, before any compile
        elif i and a["logs_resume"]:  # a later attempt that restored nothing: every committed step is lost
            lost += max((c[1] for c in record["commits"] if c[0] < a["entry"]), default=0)
        if "stop_seen" in a and a.get("result") == "stopped":
            commit_s.append(a["returned"] - a["stop_seen"])
            if a.get("signal_time"):
                signal_s.append(a["returned"] - float(a["signal_time"]))
    fp = record.get("fingerprint")
    diff = differences(fp, reference) if fp else ["unreadable"]
    done = record.get("state") == "done"
    delivered = sum(not f.get("missed") for f in record["notes"])
    if record.get("kind") == "timeout":
        delivered = max(0, len(order) - 1)  # Slurm's limit is the fault: one per requeued attempt
    if record.get("kind") == "second_writer" and len(order) < 2:
        delivered = 0  # the copy never entered while the first ran (records from before that was checked)
    return {"identical": done and not diff, "differences": diff, "done": done,
            "corrupt_restore": done and bool(diff), "failed_clearly": record.get("state") == "failed",
            "interruptions": max(0, len(order) - 1), "lost_steps": lost, "redone_steps": redone,
            "restart_s": restart_s, "resume_s": resume_s, "stop_commit_s": commit_s, "signal_to_exit_s": signal_s,
            "faults_delivered": delivered, "missed": bool(record["notes"]) and not delivered,
            "error": record.get("error") or record.get("run_error")}
