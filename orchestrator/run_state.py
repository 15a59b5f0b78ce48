"""`<run>/state.json`: a run's lifecycle as the job records it (one entry per attempt) and as `make status`,
`make resume` and the chaos harness read it. This module is its only reader and writer.

The JSON is the one the job has always written (same keys, same shapes; optional keys absent rather than null,
except an attempt's `signal`), so files from before these records load, and older tooling reads files written
with them. Shape on disk:

    {"state": str, "updated": float, "attempts": [Attempt, ...], "warnings": [str, ...],
     "job_id"?: str, "restart"?: int, "error"?: str}
    Attempt: {"job_id": str, "restart": int, "cluster": str, "host": str, "pid": int, "device": {...},
              "start": float, "end"?: float, "outcome"?: str, "signal"?: str | null, "traceback"?: str,
              "stop"?: str, "facts"?: StopFacts, "corrupt"?: CorruptChunk, "exit"?: int,
              "oom_kills"?: [int | null, int | null], "slurm_state"?: str}
    StopFacts: {"state": str | null, "preempt_time": float | null, "end_time": float | null, "signal_time": float}
    CorruptChunk: {"key": str, "manifest": str}

Unknown keys are kept and written back unchanged rather than rejected: a job of a newer checkout may record
more, and an older `make status` or `make resume` on the same sweep must neither refuse the whole sweep over it
nor drop it when the OOM watcher or a resumed job rewrites the file. A missing required key or a wrong type is
not something any version writes, and is rejected (RunStateError, naming the file and the key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.config import OrchestratorError
from orchestrator.sweep import write_json_atomic

NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))
OPTIONAL_NUMBER = (int, float, type(None))
# Outcomes of an entry that returned: their `signal` is written even when null (no signal came: the run finished,
# or it stopped by the clock of Slurm's end time), as the job always has.
RETURNED = ("done", "stopped")


class RunStateError(OrchestratorError, ValueError):
    """A state.json that no version of the job writes (names the file, and the key when one is at fault)."""


def _check(value: Any, types: tuple[type, ...], where: str) -> Any:
    # bool is an int to isinstance; no count or time in this file is ever a bool
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise RunStateError(f"{where} is {json.dumps(value)[:80]}, expected {names}")
    return value


def _split(obj: Any, where: str, required: dict[str, tuple[type, ...]],
           optional: dict[str, tuple[type, ...]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(known keys checked against their types, unknown keys as read) of the JSON object `obj`."""
    if not isinstance(obj, dict):
        raise RunStateError(f"{where} must be a JSON object, not {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise RunStateError(f"{where} lacks {', '.join(repr(k) for k in missing)}")
    known = {**required, **optional}
    kw = {k: _check(obj[k], known[k], f"{where}[{k!r}]") for k in known if k in obj}
    return kw, {k: v for k, v in obj.items() if k not in known}


@dataclass(frozen=True)
class StopFacts:
    """What Slurm said when a Slurm attempt was asked to stop (orchestrator.slurm.SlurmFacts, in part)."""

    state: str | None  # JobState
    preempt_time: float | None  # epoch s; set once Slurm decided to preempt the job
    end_time: float | None  # epoch s of the attempt's time limit
    signal_time: float  # epoch s of the stop request (now, when the request came by the clock)
    unknown: dict[str, Any] = field(default_factory=dict)  # keys of a newer writer, written back as read

    def to_json(self) -> dict[str, Any]:
        return {**self.unknown, "state": self.state, "preempt_time": self.preempt_time, "end_time": self.end_time,
                "signal_time": self.signal_time}

    @classmethod
    def from_json(cls, obj: Any, where: str = "facts") -> StopFacts:
        kw, unknown = _split(obj, where, {"state": OPTIONAL_STR, "preempt_time": OPTIONAL_NUMBER,
                                          "end_time": OPTIONAL_NUMBER, "signal_time": NUMBER}, {})
        return cls(**kw, unknown=unknown)


@dataclass(frozen=True)
class CorruptChunk:
    """The durable object that failed its checksum and ended the attempt (buffer.CorruptChunkError)."""

    key: str  # the object's key in the durable store
    manifest: str  # the manifest that referenced it
    unknown: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.unknown, "key": self.key, "manifest": self.manifest}

    @classmethod
    def from_json(cls, obj: Any, where: str = "corrupt") -> CorruptChunk:
        kw, unknown = _split(obj, where, {"key": (str,), "manifest": (str,)}, {})
        return cls(**kw, unknown=unknown)


@dataclass(frozen=True)
class Attempt:
    """One start of the job; the first seven fields are written when it starts, the rest when (and if) it ends.
    None: not recorded (absent from the JSON)."""

    job_id: str  # Slurm's job id, or the local controller's
    restart: int  # SLURM_RESTART_COUNT (local: 0)
    cluster: str  # "slurm" | "local"
    host: str
    pid: int  # the job's process on `host`
    device: dict[str, Any]  # agent.device.DeviceFingerprint.to_json(), as written: a newer fingerprint's facts stay
    start: float  # epoch s
    end: float | None = None  # epoch s
    outcome: str | None = None  # done | stopped | failed | corrupt_chunk | out_of_memory | killed
    signal: str | None = None  # name of the signal that stopped it; see RETURNED
    traceback: str | None = None  # the tail of a failed or corrupt_chunk attempt's traceback
    stop: str | None = None  # timeout | user_stop | preempted | requeued | interrupted | cancelled | corrupt_chunk
    facts: StopFacts | None = None  # a Slurm attempt that stopped
    corrupt: CorruptChunk | None = None
    exit: int | None = None  # the exit status the OOM watcher saw (negative: killed by that signal)
    oom_kills: tuple[int | None, int | None] | None = None  # the kernel's OOM-kill count before and after
    slurm_state: str | None = None  # Slurm's verdict (OUT_OF_MEMORY), as `make status` learnt it from sacct
    unknown: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.unknown, "job_id": self.job_id, "restart": self.restart,
                               "cluster": self.cluster, "host": self.host, "pid": self.pid, "device": self.device,
                               "start": self.start}
        optional = {"end": self.end, "outcome": self.outcome, "traceback": self.traceback, "stop": self.stop,
                    "facts": None if self.facts is None else self.facts.to_json(),
                    "corrupt": None if self.corrupt is None else self.corrupt.to_json(), "exit": self.exit,
                    "oom_kills": None if self.oom_kills is None else list(self.oom_kills),
                    "slurm_state": self.slurm_state}
        out.update((k, v) for k, v in optional.items() if v is not None)
        if self.signal is not None or self.outcome in RETURNED:
            out["signal"] = self.signal
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "attempt") -> Attempt:
        kw, unknown = _split(obj, where, {
            "job_id": (str,), "restart": (int,), "cluster": (str,), "host": (str,), "pid": (int,), "device": (dict,),
            "start": NUMBER,
        }, {
            "end": OPTIONAL_NUMBER, "outcome": OPTIONAL_STR, "signal": OPTIONAL_STR, "traceback": OPTIONAL_STR,
            "stop": OPTIONAL_STR, "facts": (dict, type(None)), "corrupt": (dict, type(None)),
            "exit": (int, type(None)), "oom_kills": (list, type(None)), "slurm_state": OPTIONAL_STR,
        })
        if kw.get("facts") is not None:
            kw["facts"] = StopFacts.from_json(kw["facts"], f"{where}['facts']")
        if kw.get("corrupt") is not None:
            kw["corrupt"] = CorruptChunk.from_json(kw["corrupt"], f"{where}['corrupt']")
        if kw.get("oom_kills") is not None:
            pair = kw["oom_kills"]
            if len(pair) != 2:
                raise RunStateError(f"{where}['oom_kills'] is {pair}, expected [before, after]")
            kw["oom_kills"] = tuple(_check(n, (int, type(None)), f"{where}['oom_kills']") for n in pair)
        return cls(**kw, unknown=unknown)


@dataclass(frozen=True)
class RunState:
    """The whole state.json. `state` is the job's word on the run: running | done | requeued | stopped | failed |
    cancelled | requeue_limit | out_of_memory | killed."""

    state: str
    updated: float  # epoch s of the last write
    attempts: tuple[Attempt, ...] = ()
    warnings: tuple[str, ...] = ()  # e.g. an attempt on other hardware than the one before
    job_id: str | None = None  # the last attempt's; absent when only the OOM watcher has written
    restart: int | None = None
    error: str | None = None  # why the run failed or was killed, for `make status`
    unknown: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def begin(prior: RunState | None, attempt: Attempt, now: float, warning: str | None = None) -> RunState:
        """`prior` (None before the first attempt) running `attempt`, with `warning` added when given."""
        base = prior or RunState(state="running", updated=now)
        return replace(base, state="running", job_id=attempt.job_id, restart=attempt.restart, updated=now,
                       attempts=(*base.attempts, attempt), warnings=(*base.warnings, *([warning] if warning else [])))

    @property
    def last(self) -> Attempt:
        assert self.attempts, f"run state {self.state!r} has no attempt yet"
        return self.attempts[-1]

    def with_attempt(self, index: int, **changes: Any) -> RunState:
        """This state with attempt `index` (negative: from the end) changed."""
        assert -len(self.attempts) <= index < len(self.attempts), (index, len(self.attempts))
        attempts = list(self.attempts)
        attempts[index] = replace(attempts[index], **changes)
        return replace(self, attempts=tuple(attempts))

    def with_last(self, **changes: Any) -> RunState:
        assert self.attempts, f"run state {self.state!r} has no attempt to change ({changes})"
        return self.with_attempt(-1, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.unknown, "state": self.state, "updated": self.updated,
                               "attempts": [a.to_json() for a in self.attempts], "warnings": list(self.warnings)}
        for name in ("job_id", "restart", "error"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> RunState:
        kw, unknown = _split(obj, "state.json", {"state": (str,), "updated": NUMBER}, {
            "attempts": (list,), "warnings": (list,), "job_id": OPTIONAL_STR, "restart": (int, type(None)),
            "error": OPTIONAL_STR})
        attempts = tuple(Attempt.from_json(a, f"attempts[{i}]") for i, a in enumerate(kw.pop("attempts", [])))
        warnings = tuple(_check(w, (str,), f"warnings[{i}]") for i, w in enumerate(kw.pop("warnings", [])))
        return cls(**kw, attempts=attempts, warnings=warnings, unknown=unknown)


def read_run_state(path: Path) -> RunState | None:
    """The run state in `path`; None when there is no file yet. RunStateError (one line, naming the file) when the
    file is not a run state."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return RunState.from_json(json.loads(text))
    except json.JSONDecodeError as e:
        raise RunStateError(f"{path}: not JSON ({e})") from None
    except RunStateError as e:
        raise RunStateError(f"{path}: {e}") from None


def write_run_state(path: Path, state: RunState) -> None:
    """Replace `path` with `state` in one rename: readers see the old file or the new one, never half of one."""
    write_json_atomic(Path(path), state.to_json())
