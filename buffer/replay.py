"""The two-tier replay buffer: adds and samples on scratch, commits of new data only to the durable tier.

`Replay` composes parts with one job each, sharing a `Context` (fixed setup), a `Window` (where the buffer stands)
and a `Health` (what has gone wrong): `Tail` (the open shard and eviction), `Chunks` (finished shards on scratch,
fetched from durable when missing), `Sampler`, `Committer` (commits and garbage collection) and `Restorer`."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .chunks import Chunks
from .codec import ShardCodec
from .config import ReplayConfig, Schema
from .durable import Durable
from .errors import CorruptChunkError, DurableStoreError, SchemaError
from .integrity import latest_manifest, read_manifest
from .records import PackRef
from .restorer import Restored, Restorer, commit_blobs, read_pack
from .sampler import Sampler
from .sampling import InnerCache
from .scratch import Scratch
from .scratchlock import ScratchLock
from .state import Context, Health, Window
from .tail import Tail
from .writer import Committer

__all__ = ["Replay", "Restored", "read_latest_commit", "read_latest_manifest"]


class Replay:
    """Replay of `num_streams` lockstep streams. See docs/interfaces.md for the contract."""

    def __init__(self, schema: Schema, num_streams: int, scratch: str, durable: str, config: ReplayConfig, *,
                 batch: int, length: int, seed: int = 0, force_first: bool = False,
                 writer_token: str | None = None):
        if num_streams < 1 or batch < 1 or length < 1:
            raise ValueError(f"Replay: num_streams={num_streams}, batch={batch}, length={length} must be > 0")
        if force_first and schema.get("is_first") is None:
            raise SchemaError("Replay: force_first=True needs an 'is_first' field in the schema")
        self.schema, self.fields, self.cfg = dict(schema), sorted(schema), config
        self.num_streams, self.batch, self.length, self.force_first = num_streams, batch, length, force_first
        self.cap_per_stream = config.capacity // num_streams
        if self.cap_per_stream < length:
            raise ValueError(f"Replay: capacity {config.capacity} / {num_streams} streams < length {length}")
        self.token = writer_token or uuid.uuid4().hex
        self.codec = ShardCodec(config.chunk, config.inner, config.zstd_level, config.codec)
        self._durable = Durable(durable, fsync=config.fsync)
        try:
            gen = self._durable.take_over(self.token)
            existing = self._durable.manifests()
        except DurableStoreError:
            raise
        except OSError as e:
            raise DurableStoreError(f"durable URL {durable!r} is not usable: {e}") from e
        self._scratch_lock = ScratchLock(scratch)  # after the take-over: a second copy fences the first at once
        try:
            self._scratch = Scratch(self._scratch_lock.path, self.schema, num_streams, self.codec,
                                    config.zstd_level)
        except BaseException:
            self._scratch_lock.release()
            raise
        self.scratch_dir = self._scratch_lock.path  # `scratch`, or a sibling while another process holds it
        self._pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="replay-io")
        ctx = Context(self.schema, self.fields, num_streams, config, self.codec, self._durable, self._scratch,
                      self._pool, self.token, gen)
        self._win, self._health = Window(seed=int(seed)), Health()
        page_cache: dict[str, dict] = {}  # pages read or written (write-once: never stale)
        self._tail = Tail(ctx, self._win, self._health)
        self._chunks = Chunks(ctx, self._win, self._health)
        self._sampler = Sampler(ctx, self._win, self._health, self._tail.arrays, self._chunks.ensure_local,
                                batch=batch, length=length, force_first=force_first)
        self._writer = Committer(ctx, self._win, self._health, self._tail, page_cache,
                                 (existing[0][0] + 1) if existing else 1,
                                 batch=batch, length=length, force_first=force_first)
        self._restorer = Restorer(ctx, self._win, self._health, self._tail, self._chunks, page_cache)

    @property
    def info(self) -> dict:
        """Positions of the buffer: steps per stream, FIFO window [lo, t), sampler draws, last commit id."""
        w = self._win
        return {"t": w.t, "lo": w.lo, "draws": w.draws, "seed": w.seed, "commit": w.last_commit, "k_lo": w.k_lo,
                "k_hi": w.k_hi}

    @property
    def at_inner_boundary(self) -> bool:
        """True when every stream's steps end on a whole inner chunk: a commit now writes no partial frame that
        the next one writes again (as part of the completed inner chunk). A periodic commit can wait for this."""
        return self._win.t % self.codec.inner == 0

    def __len__(self) -> int:
        """Steps held over all streams."""
        return (self._win.t - self._win.lo) * self.num_streams

    @property
    def stats(self) -> dict:
        """Sizes and duration of the last commit."""
        return self._writer.stats

    @property
    def skipped(self) -> list[CorruptChunkError]:
        """What the last restore() passed over, newest first."""
        return self._restorer.skipped

    def add(self, step: dict[str, np.ndarray]) -> None:
        """Append one step of every stream: each value (W, *spec.shape) of exactly spec.dtype."""
        self._health.check_usable()
        self._tail.add(step)
        if self._win.t > self.cap_per_stream or self._win.pending_delete:
            self._tail.evict(self.cap_per_stream, self._writer.idle)

    def sample(self) -> dict[str, np.ndarray]:
        """Next batch: each field (B, T, *spec.shape), uniform over (stream, start) in the window."""
        self._health.check_usable()
        return self._sampler.sample()

    def read(self, stream: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Steps [start, stop) of one stream, each field (stop - start, *shape); must lie in the window."""
        return self._sampler.read(stream, start, stop)

    def commit(self, extra: dict, blobs: dict[str, bytes] | None = None, background: bool = False) -> int:
        """Publish the current state durably; returns the commit id. Waits for the previous commit first."""
        return self._writer.commit(extra, blobs, background)

    def check_writer(self) -> None:
        """Raise WriterFencedError if a newer writer has taken over this run (one small read of the store)."""
        self._writer.check_writer()

    def wait(self) -> None:
        """Join the background commit, re-raising its failure."""
        self._writer.wait()

    def restore(self) -> Restored | None:
        """Bring the buffer to the newest durable commit whose chunks verify; None on a fresh store."""
        return self._restorer.restore()

    def close(self) -> None:
        """Wait for the background commit (re-raising its failure) and stop every thread."""
        self._health.closing.set()
        try:
            self.wait()
        finally:
            self._chunks.join()
            self._writer.close()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._scratch_lock.release()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Internals that tests and the buffer benchmark reach for: the manifest keys a writer tracks, the lazy
    # restore's thread, and the sampler's cache and gather (swapped and timed on their own).
    @property
    def _manifest_keys(self) -> dict[str, frozenset[str]]:
        return self._win.manifest_keys

    @property
    def _lazy_thread(self) -> threading.Thread | None:
        return self._chunks.lazy_thread

    @property
    def _cache(self) -> InnerCache:
        return self._sampler.cache

    @_cache.setter
    def _cache(self, cache: InnerCache) -> None:
        self._sampler.cache = cache

    def _load_inner(self, w: int, g: int) -> dict[str, np.ndarray]:
        return self._sampler.load_inner(w, g)

    def _gather(self, ws: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        return self._sampler.gather(ws, starts, length)


def read_latest_manifest(durable: str, with_tables: bool = False) -> dict | None:
    """Newest manifest of a durable store that passes its checks, its key under "key" (read-only; for status and
    verify tools). The chunk tables, the bulk of a manifest, are dropped unless `with_tables` (then they are as
    stored: pass the manifest through `manifest.load_pages` for the rows its pages hold)."""
    m, _ = latest_manifest(Durable(durable, create=False))
    if m is not None and not with_tables:
        for bulk in ("tables", "heads", "pages"):
            m.pop(bulk, None)
    return m


def read_latest_commit(durable: str) -> Restored | None:
    """The newest commit's `extra` and blobs, read-only: no writer token is taken and nothing in the store is
    written, moved or deleted, so it is safe beside a running writer (evaluation, inspection tools). Replay data
    is not read. A commit whose manifest or pack cannot be read (e.g. collected by the writer meanwhile) is
    skipped for the next older one; None on a store without commits."""
    d = Durable(durable, create=False)
    ms = d.manifests()
    errors = []
    for _c, _g, mkey in ms:
        try:
            m = read_manifest(d, mkey)
            _pack, part = read_pack(d, PackRef.from_json(m["pack"]), mkey)
        except (DurableStoreError, CorruptChunkError, ValueError) as e:
            errors.append(f"{mkey}: {e}")
            continue
        return Restored(m["commit"], m["extra"], commit_blobs(m["blobs"], part))
    if errors:
        raise DurableStoreError(f"none of the {len(ms)} commits in {durable} could be read; newest: {errors[0]}")
    return None
