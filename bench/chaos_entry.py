"""The job side of `make chaos`: `instrumented_train`, set as `run.entry` of every trial.

It calls the real entry unchanged and appends timestamped events to `<logs>/chaos-events.jsonl` (entry, each loop
iteration, the loop's own events: resumed, committed, stopped; the stop request seen, return or error), flushed as
written so a killed attempt leaves its trace. Nothing here changes the trajectory: the stop flag and the loop's
events are only observed.

Jobs import this module from the checkout: the trial puts the repository root on their PYTHONPATH (`bench` is not
an installed package)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.events import LoopEvent
from orchestrator.job import resolve_entry

ENTRY = "bench.chaos_entry:instrumented_train"
EVENTS = "chaos-events.jsonl"
TARGET_ENV = "R2I_CHAOS_TARGET"  # the entry instrumented_train wraps (default agent.train:train)
TRAINING_LOOP = "agent.train:train"  # the entry that reports its resume point (others are only timed)


def _proc_start() -> float:
    """Unix time this process started (from /proc), i.e. when the step launched Python."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def instrumented_train(cfg: Any, ctx: Any) -> str:
    """`run.entry` for chaos trials: the real entry ($R2I_CHAOS_TARGET) with its progress recorded as events."""
    target_spec = os.environ.get(TARGET_ENV, TRAINING_LOOP)
    target = resolve_entry(target_spec)
    Path(ctx.log_dir).mkdir(parents=True, exist_ok=True)
    f = open(Path(ctx.log_dir) / EVENTS, "a", buffering=1)

    def ev(kind: str, **kw: Any) -> None:
        f.write(json.dumps({"ev": kind, "token": ctx.writer_token, "t": time.time(), **kw}) + "\n")

    ev("entry", proc_start=_proc_start(), pid=os.getpid(), num_envs=cfg.train.num_envs,
       logs_resume=target is resolve_entry(TRAINING_LOOP))
    calls, seen = 0, False
    outer_hook = ctx.on_event

    def should_stop() -> bool:
        nonlocal calls, seen
        calls += 1
        stop = ctx.should_stop()
        if calls > 1:
            ev("step", n=calls)  # calls - 1 loop iterations are done
        if stop and not seen:
            seen = True
            ev("stop_seen", signal_time=getattr(ctx.should_stop, "time", None),
               signal=getattr(ctx.should_stop, "signal", None))
        return stop

    def on_event(e: LoopEvent) -> None:
        fields = e.to_json()
        ev(fields.pop("ev"), **fields)
        if outer_hook is not None:
            outer_hook(e)

    try:
        result = target(cfg, replace(ctx, should_stop=should_stop, on_event=on_event))
    except BaseException as e:
        ev("error", error=f"{type(e).__name__}: {e}"[:600])
        raise
    ev("return", result=result, calls=calls)
    f.close()
    return result
