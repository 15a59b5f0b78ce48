"""The env adapter interface, its errors, seeding and the pickle-free snapshot envelope."""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

import numpy as np

from buffer import FieldSpec as FieldSpec  # re-exported: the env modules and agent.envs use it
from buffer import Schema

Obs = dict[str, np.ndarray]  # `vector` (D,) f32 or `image` (64, 64, 3) u8


class EnvError(Exception):
    """Base class of every error raised by agent.envs."""


class EnvConfigError(EnvError, ValueError):
    """The env config names something that does not exist or cannot work."""


class SnapshotError(EnvError, ValueError):
    """A snapshot blob is malformed or belongs to a different env/config."""


class EnvWorkerError(EnvError, RuntimeError):
    """An env worker process failed; the message names the env index."""


class Env(Protocol):
    """A single-agent, discrete-action env with exact pickle-free snapshots."""

    num_actions: int

    def obs_spec(self) -> Schema: ...

    def reset(self, episode_seed: int) -> Obs:
        """Start the episode determined by `episode_seed` alone (not by any earlier episode)."""
        ...

    def step(self, action: int) -> tuple[Obs, float, bool, bool]:
        """-> (obs, reward, terminated, truncated)."""
        ...

    @property
    def success(self) -> bool | None:
        """Whether the current (or just finished) episode succeeded; None for envs without the notion."""
        ...

    def snapshot(self) -> bytes:
        """The in-episode state (after at least one reset), without pickle."""
        ...

    def restore(self, blob: bytes) -> Obs:
        """Return to the state of `snapshot()`; returns the observation seen at that point."""
        ...

    def close(self) -> None: ...


SEED_MASK = 0x7FFFFFFF  # labmaze and RandomState need seeds < 2**31


def episode_seed(seed: int, env_index: int, episode_index: int) -> int:
    """Seed of episode `episode_index` of env `env_index` in a run seeded `seed`: a pure function, < 2**31."""
    if min(seed, env_index, episode_index) < 0:
        raise ValueError(f"episode_seed needs non-negative ints, got {(seed, env_index, episode_index)}")
    state = np.random.SeedSequence([seed, env_index, episode_index]).generate_state(1, dtype=np.uint32)
    return int(state[0]) & SEED_MASK


def check_action(action: Any, num_actions: int) -> int:
    """The action as a Python int in [0, num_actions), or a ValueError naming it."""
    a = int(action)
    if a != action or not 0 <= a < num_actions:
        raise ValueError(f"action {action!r} is not an int in [0, {num_actions})")
    return a


_HEADER_KEY = "__header__"


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """Encode a JSON header plus named arrays as an uncompressed .npz (no pickle)."""
    arrays = arrays or {}
    assert _HEADER_KEY not in arrays, sorted(arrays)
    for name, arr in arrays.items():
        assert arr.dtype != object, f"array {name!r} has dtype object"
    buf = io.BytesIO()
    head = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    np.savez(buf, **{_HEADER_KEY: head}, **arrays)
    return buf.getvalue()


def unpack(blob: bytes, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of `pack`; checks that the header says `kind`."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop(_HEADER_KEY).tobytes().decode())
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"not a {kind} snapshot: {e}") from e
    if header.get("kind") != kind:
        raise SnapshotError(f"snapshot is of kind {header.get('kind')!r}, expected {kind!r}")
    return header, arrays
