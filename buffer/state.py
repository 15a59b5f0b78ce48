"""What the parts of a `Replay` share: its fixed setup (`Context`), where the buffer stands (`Window`) and what
has gone wrong (`Health`). Each part receives these objects; none reaches into another part."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field, fields

from .codec import ShardCodec
from .config import ReplayConfig, Schema
from .durable import Durable
from .errors import CorruptChunkError, ReplayError
from .manifest import Head, ShardInfo
from .records import PageRef
from .scratch import Scratch


@dataclass(frozen=True, eq=False)
class Context:
    """Fixed for the life of a Replay."""

    schema: Schema
    fields: list[str]  # sorted field names: the field order of every table row and shard object
    num_streams: int
    cfg: ReplayConfig
    codec: ShardCodec
    durable: Durable
    scratch: Scratch
    pool: ThreadPoolExecutor  # chunk encodes, decodes and durable transfers
    token: str  # this writer's token
    gen: int  # the generation its take-over got

    def parallel(self, fn: Callable, jobs: list, caller_first: Callable[[], None]) -> None:
        """Run fn over jobs on the caller and up to `io_threads` pool workers pulling from one iterator; pool
        workers that have not started when the caller runs out of jobs are cancelled, so a pool busy with
        prefetch or a commit never delays a sample beyond the caller doing all the work itself."""
        it, errors = iter(jobs), []

        def drain() -> None:
            for job in it:  # list iterators hand out each item once, also across threads
                try:
                    fn(job)
                except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller
                    errors.append(e)

        helpers = [self.pool.submit(drain) for _ in range(min(self.cfg.io_threads, len(jobs) - 1))]
        try:
            caller_first()
        finally:
            drain()
            for h in helpers:
                if not h.cancel():
                    h.result()
        if errors:
            raise errors[0]


@dataclass(eq=False)
class Window:
    """Where the buffer stands: steps, shards and what the last commit published. Restore tries manifests in turn
    and reset() empties it in place, so every part keeps seeing the same object. `seed` survives a reset: it is
    the constructor's until a restore reads the committed one. Health.lock guards `shards` and `local`, which
    fetch threads read and write."""

    seed: int
    t: int = 0  # steps per stream so far
    lo: int = 0  # FIFO window [lo, t)
    k_lo: int = 0  # finished shards in the window: [k_lo, k_hi); shard k_hi is open (its steps in the tail)
    k_hi: int = 0
    k_durable: int = 0  # shards below it have durable objects
    draws: int = 0  # samples drawn so far
    shards: dict[int, ShardInfo] = field(default_factory=dict)
    heads: dict[int, dict[int, Head]] = field(default_factory=dict)  # shard -> stream -> segments its object skips
    open_k: int = -1  # the shard open at the last commit; its segments start the tail
    pages: tuple[PageRef, ...] = ()  # the last commit's pages
    local: dict[tuple[int, int], threading.Event | bool] = field(default_factory=dict)  # (w, k) on scratch, or
    # an event set when a fetch in progress ends
    pending_delete: list[int] = field(default_factory=list)  # evicted shards whose scratch files wait for a commit
    manifest_keys: dict[str, frozenset[str]] = field(default_factory=dict)  # manifest -> every object it needs
    restored_from: str = "(none)"  # manifest key of the last restore
    last_commit: int = 0

    def reset(self) -> None:
        for f in fields(self):
            if f.name != "seed":
                setattr(self, f.name, f.default if f.default_factory is MISSING else f.default_factory())


@dataclass(eq=False)
class Health:
    """Failures shared by the caller's thread, the pool and the lazy fetch thread. `lock` guards what background
    threads write here and Window's `shards` and `local`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    corrupt: dict[str, CorruptChunkError] = field(default_factory=dict)  # durable key -> what its fetch found
    bad_keys: set[str] = field(default_factory=set)  # keys known missing or corrupt: their manifests cannot restore
    bg_error: BaseException | None = None  # a background failure the caller has not seen yet
    broken: str | None = None  # why the buffer is unusable (a shard that could not be written)
    pinned: frozenset[str] = frozenset()  # manifests GC keeps until a lazy restore has verified every chunk
    closing: threading.Event = field(default_factory=threading.Event)

    def check_usable(self) -> None:
        if self.broken:
            raise ReplayError(f"replay is unusable after an earlier failure: {self.broken}")
        if self.bg_error is not None:
            raise self.bg_error

    def mark_corrupt(self, err: CorruptChunkError, k: int, window: Window) -> CorruptChunkError:
        """Record what a fetch of shard k found; a shard still in the window fails the caller's next call."""
        with self.lock:
            self.corrupt[err.key] = err
            self.bad_keys |= {err.key}
            if k >= window.k_lo and self.bg_error is None:
                self.bg_error = err
        return err
