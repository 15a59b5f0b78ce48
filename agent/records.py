"""The records a commit's `extra` carries, written by the training loop and read by its resume, `make eval` and
`make status`. Their JSON is the one commits have always carried (same keys, shapes and order): commits made
before these records existed restore with this code, and commits made with it restore with the code before."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

LOOP_FORMAT = 1


class RecordError(ValueError):
    """A commit's `extra` that is not what the training loop writes (names the record and the field)."""


def _fields(cls: type, obj: Any, where: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments of `cls` from the JSON object `obj`; unknown keys are ignored (a newer writer)."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where} must be a JSON object, not {type(obj).__name__}")
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in obj and n not in optional]
    if missing:
        raise RecordError(f"{where} lacks {', '.join(missing)}")
    return {n: obj[n] for n in names if n in obj}


@dataclass(frozen=True)
class LoopState:
    """`extra.loop`: what the loop needs to continue bit for bit."""

    format: int
    config_digest: str
    env_steps: int
    updates: int
    episodes: int
    key: tuple[int, ...]  # the loop's jax PRNG key, as uint32 words
    train_mean: dict[str, Any]  # agent.metrics.Mean.to_json() of the train metrics not yet logged
    episode_mean: dict[str, Any]  # the same for episode metrics
    last_return: float | None
    wall_time_s: float  # training time over every attempt so far
    metrics_bytes: int  # length of metrics.jsonl that this commit covers

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "key": list(self.key)}

    @classmethod
    def from_json(cls, obj: Any) -> LoopState:
        kw = _fields(cls, obj, "extra.loop")
        if kw["format"] != LOOP_FORMAT:
            raise RecordError(f"extra.loop has format {kw['format']!r}; this code reads format {LOOP_FORMAT}")
        return cls(**{**kw, "key": tuple(int(k) for k in kw["key"])})


@dataclass(frozen=True)
class Progress:
    """`extra.progress`: what `make status` shows of a run without reading its replay."""

    env_steps: int
    target_steps: int
    updates: int
    episodes: int
    last_return: float | None
    wall_time_s: float
    steps_per_s: float  # this attempt's rate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Progress:
        return cls(**_fields(cls, obj, "extra.progress"))


@dataclass(frozen=True)
class CommitExtra:
    """A commit's whole `extra`. `loop` and `device` are the training loop's (other entries, such as the test
    workload, commit progress alone); `device` is agent.device's commit text."""

    progress: Progress
    wandb_run_id: str
    loop: LoopState | None = None
    device: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.loop is not None:
            out["loop"] = self.loop.to_json()
        out.update(progress=self.progress.to_json(), wandb_run_id=self.wandb_run_id)
        if self.device is not None:
            out["device"] = self.device
        return out

    @classmethod
    def from_json(cls, obj: Any) -> CommitExtra:
        kw = _fields(cls, obj, "a commit's extra", optional=("loop", "device"))
        loop = kw.get("loop")
        device = kw.get("device")
        return cls(progress=Progress.from_json(kw["progress"]), wandb_run_id=kw["wandb_run_id"],
                   loop=None if loop is None else LoopState.from_json(loop),
                   device=device if isinstance(device, str) else None)
