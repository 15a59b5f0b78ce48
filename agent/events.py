"""What the training loop reports as it runs, to `RunContext.on_event`: typed, frozen, and free of jax.

A hook only observes: the loop calls it after the fact it reports, and nothing it returns or raises is meant to
steer the trajectory (an exception from it ends the run like any other error). Harnesses (fault injection,
benchmarks) read these instead of the loop's log lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class LoopEvent:
    """Base of every event; `kind` names it in JSON."""

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"ev": self.kind, **asdict(self)}

    @staticmethod
    def from_json(obj: dict[str, Any]) -> LoopEvent:
        kinds = {c.kind: c for c in (Resumed, Committed, Stopped)}
        if not isinstance(obj, dict) or obj.get("ev") not in kinds:
            raise ValueError(f"loop event {obj!r}: 'ev' must be one of {sorted(kinds)}")
        fields = {k: v for k, v in obj.items() if k != "ev"}
        return kinds[obj["ev"]](**fields)


@dataclass(frozen=True)
class Resumed(LoopEvent):
    """The loop restored a durable commit and continues from it."""

    kind: ClassVar[str] = "resumed"
    env_steps: int
    updates: int
    commit: int


@dataclass(frozen=True)
class Committed(LoopEvent):
    """A commit was handed to the replay: written and published when `background` is false, else being written."""

    kind: ClassVar[str] = "committed"
    commit: int
    env_steps: int
    updates: int
    background: bool
    seconds: float  # host time the commit call took (the loop waited this long)


@dataclass(frozen=True)
class Stopped(LoopEvent):
    """A stop request was answered with a commit; the entry returns "stopped" next."""

    kind: ClassVar[str] = "stopped"
    env_steps: int
