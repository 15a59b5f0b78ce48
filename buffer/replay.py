"""The two-tier replay buffer: adds and samples on scratch, commits of new data only to the durable tier."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .codec import ShardCodec, checksum
from .config import ReplayConfig, Schema
from .durable import CHUNK_DIR, PACK_DIR, PAGE_DIR, Durable
from .errors import (
    CorruptChunkError,
    DurableStoreError,
    NoRestorableCommitError,
    ReplayError,
    SchemaError,
    ScratchError,
)
from .integrity import latest_manifest, read_manifest
from .manifest import Head, ShardInfo, check_compatible, object_ids, object_keys
from .persist import Persistence, _Snapshot, commit_blobs, read_pack
from .sampling import InnerCache, plan_batch
from .scratch import Scratch
from .scratchlock import ScratchLock

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    commit_id: int
    extra: dict
    blobs: dict[str, bytes]


class Replay(Persistence):
    """Replay of `num_streams` lockstep streams. See docs/interfaces.md for the contract.

    Sample n draws from Philox(key=(seed, n)) only, mapped onto the window valid at the call, so a plan is a
    pure function of (seed, n, t, lo): prefetch threads precompute decoded inner chunks (immutable once
    written) for the plans expected under the current window and never hold or advance a random state.
    """

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
            self._gen = self._durable.take_over(self.token)
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
        self._commit_exec = ThreadPoolExecutor(1, thread_name_prefix="replay-commit")
        self._lock = threading.Lock()
        self._tls = threading.local()  # per-thread decode buffer of _fill
        self._inner_enc: dict[int, tuple[int, list[Future]]] = {}  # j -> (shard, per-stream encode jobs)
        self._cache = InnerCache(config.cache_mb * 2**20, self._pool, self._load_inner,
                                 config.inner * sum(s.step_bytes for s in schema.values()))
        self._tail = {f: np.zeros((num_streams, config.chunk, *s.shape), s.dtype) for f, s in schema.items()}
        self._slots = [(f, np.dtype(s.dtype), (num_streams, *s.shape), self._tail[f])
                       for f, s in schema.items()]
        self._seed = int(seed)
        self._next_commit = (existing[0][0] + 1) if existing else 1
        self._reset_state()
        self._commit_fut: Future | None = None
        self._lazy_thread: threading.Thread | None = None
        self._bg_error: BaseException | None = None
        self._corrupt: dict[str, CorruptChunkError] = {}  # durable chunk key -> what its fetch found
        self._page_cache: dict[str, dict] = {}  # pages read or written (write-once: never stale)
        self._shard_keys: dict[str, dict[int, frozenset[str]]] = {}  # page -> shard -> keys of its objects
        self._bad_keys: set[str] = set()  # chunk keys known missing or corrupt: their manifests cannot restore
        self._pinned: frozenset[str] = frozenset()  # manifests GC keeps until a lazy restore has verified
        self._closing = threading.Event()
        self._broken: str | None = None
        self.stats: dict = {}
        self.skipped: list[CorruptChunkError] = []  # what the last restore() passed over, newest first

    # --- state
    def _reset_state(self) -> None:
        self._t = self._lo = self._k_lo = self._k_hi = self._k_durable = 0
        self._draws = 0
        self._shards: dict[int, ShardInfo] = {}
        self._heads: dict[int, dict[int, Head]] = {}  # shard -> stream -> segments its object skips
        self._open_k = -1  # the shard open at the last commit; its segments start the tail
        self._pages: list[list] = []  # references [key, nbytes, crc, k0, k1] of the last commit's pages
        self._local: dict[tuple[int, int], threading.Event | bool] = {}
        self._pending_delete: list[int] = []
        self._manifest_keys: dict[str, frozenset[str]] = {}
        self._restored_from = "(none)"
        self._last_commit = 0

    @property
    def info(self) -> dict:
        """Positions of the buffer: steps per stream, FIFO window [lo, t), sampler draws, last commit id."""
        return {"t": self._t, "lo": self._lo, "draws": self._draws, "seed": self._seed,
                "commit": self._last_commit, "k_lo": self._k_lo, "k_hi": self._k_hi}

    @property
    def at_inner_boundary(self) -> bool:
        """True when every stream's steps end on a whole inner chunk: a commit now writes no partial frame that
        the next one writes again (as part of the completed inner chunk). A periodic commit can wait for this."""
        return self._t % self.codec.inner == 0

    def __len__(self) -> int:
        """Steps held over all streams."""
        return (self._t - self._lo) * self.num_streams

    def _check_usable(self) -> None:
        if self._broken:
            raise ReplayError(f"replay is unusable after an earlier failure: {self._broken}")
        if self._bg_error is not None:
            raise self._bg_error

    # --- add
    def add(self, step: dict[str, np.ndarray]) -> None:
        """Append one step of every stream: each value (W, *spec.shape) of exactly spec.dtype."""
        self._check_usable()
        if step.keys() != self.schema.keys():
            raise SchemaError(f"add: keys {sorted(step)} differ from schema keys {self.fields}")
        i = self._t - self._k_hi * self.cfg.chunk
        # One pass: a rejected step may leave values in slot i, which is not part of the buffer until t moves.
        for f, dtype, shape, tail in self._slots:
            v = step[f]
            if not isinstance(v, np.ndarray):
                v = np.asarray(v)
            if v.dtype != dtype or v.shape != shape:
                raise SchemaError(f"add: field {f!r} is {v.dtype}{list(v.shape)}, schema wants "
                                  f"{dtype}{list(shape)}")
            tail[:, i] = v
        self._t += 1
        if (i + 1) % self.codec.inner == 0:
            self._inner_enc[i // self.codec.inner] = self._encode_inner(i // self.codec.inner)
        if i + 1 == self.cfg.chunk:
            self._finish_shard()
        if self._t > self.cap_per_stream or self._pending_delete:
            self._evict()

    def _encode_inner(self, j: int) -> tuple[int, list[Future]]:
        """Start encoding inner chunk j of the open shard, every stream and field, in the pool: by the time
        the shard is full only its last inner chunk is left to encode, so add() rarely waits for zstd and a
        second core encodes while the caller adds. Rows of a finished inner chunk do not change until the
        shard is written (_finish_shard waits for these jobs before the tail is reused)."""
        inner, k = self.codec.inner, self._k_hi

        def encode(w: int) -> list[bytes]:
            return [self.codec.encode_inner(self._tail[f][w, j * inner:(j + 1) * inner]) for f in self.fields]

        return k, [self._pool.submit(encode, w) for w in range(self.num_streams)]

    def _finish_shard(self) -> None:
        k, W = self._k_hi, self.num_streams
        pending, self._inner_enc = self._inner_enc, {}
        # after a restore, the inner chunks the restored tail already filled were never encoded
        pending = {j: pending[j] if pending.get(j, (None,))[0] == k else self._encode_inner(j)
                   for j in range(self.codec.n_inner)}
        try:  # wait here, not in pool jobs: a job waiting on jobs queued behind it would deadlock the pool
            enc = [[fut.result() for fut in pending[j][1]] for j in range(self.codec.n_inner)]
        except BaseException as e:
            self._broken = f"encoding shard {k} failed: {e!r}"
            raise

        def write(w: int, fi: int) -> tuple[int, int]:
            data = self.codec.assemble([enc[j][w][fi] for j in range(self.codec.n_inner)])
            self._scratch.write(self.fields[fi], w, k, data)
            return len(data), checksum(data)

        jobs = {(w, fi): self._pool.submit(write, w, fi) for w in range(W) for fi in range(len(self.fields))}
        size, crc = np.zeros((W, len(self.fields)), np.uint32), np.zeros((W, len(self.fields)), np.uint32)
        try:
            for (w, j), fut in jobs.items():
                size[w, j], crc[w, j] = fut.result()
        except ScratchError as e:
            for fut in jobs.values():
                fut.cancel()
            self._broken = str(e)
            raise
        obj = object_ids(crc)
        with self._lock:
            self._shards[k] = ShardInfo(size, crc, obj)
            for w in range(W):
                self._local[(w, k)] = True
        self._k_hi = k + 1

    def _evict(self) -> None:
        self._lo = max(0, self._t - self.cap_per_stream)
        k_new = self._lo // self.cfg.chunk
        while self._k_lo < k_new:
            k = self._k_lo
            with self._lock:
                self._shards.pop(k, None)
                for w in range(self.num_streams):
                    self._local.pop((w, k), None)
                self._k_lo = k + 1
            self._pending_delete.append(k)
        # Scratch files of shards a running commit may still upload are deleted once it is done.
        if self._pending_delete and (self._commit_fut is None or self._commit_fut.done()):
            for k in self._pending_delete:
                self._scratch.delete_shard(k, range(self.num_streams))
            self._pending_delete.clear()

    # --- chunks on scratch
    def _ensure_local(self, w: int, k: int) -> None:
        """Make shard (w, k) of every field present and verified on scratch, fetching it if needed."""
        while True:
            with self._lock:
                st = self._local.get((w, k))
                if st is True:
                    return
                if k not in self._shards:
                    raise ReplayError(f"shard {k} of stream {w} is outside the window "
                                      f"[{self._k_lo}, {self._k_hi})")
                info = self._shards[k]
                if st is None:
                    ev = threading.Event()
                    self._local[(w, k)] = ev
                    break
            st.wait()
        try:
            self._materialize(w, k, info)
            with self._lock:
                if (w, k) in self._local:
                    self._local[(w, k)] = True
        except BaseException:
            with self._lock:
                if self._local.get((w, k)) is ev:
                    del self._local[(w, k)]
            raise
        finally:
            ev.set()

    def _materialize(self, w: int, k: int, info: ShardInfo) -> None:
        if all(self._scratch.verify(f, w, k, int(info.size[w, j]), int(info.crc[w, j]))
               for j, f in enumerate(self.fields)):
            return
        parts = self._fetch_chunk(w, k, info)
        for f, p in zip(self.fields, parts, strict=True):
            self._scratch.write(f, w, k, p)

    def _load_inner(self, w: int, g: int) -> dict[str, np.ndarray]:
        """Decoded inner chunk g (global inner index along time) of stream w, all fields."""
        out = {f: np.empty((self.codec.inner, *s.shape), s.dtype) for f, s in self.schema.items()}
        self._decode_into(w, g, out)
        return out

    def _decode_into(self, w: int, g: int, targets: dict[str, np.ndarray]) -> None:
        """Decode inner chunk g of stream w into `targets` (field -> contiguous (inner, *shape) array)."""
        k, j = divmod(g, self.codec.n_inner)
        self._ensure_local(w, k)
        sc = self._scratch
        for f, arr in targets.items():
            try:
                if sc.is_small(f):
                    arr[...] = sc.small_inner(f, w, k, j)
                else:
                    self.codec.decode_inner(sc.read_inner(f, w, k, j), arr, f"{sc.file(f, w, k)}[{j}]")
            except CorruptChunkError:
                with self._lock:  # refetch from durable next time rather than failing forever
                    self._local.pop((w, k), None)
                raise

    # --- sample
    def sample(self) -> dict[str, np.ndarray]:
        """Next batch: each field (B, T, *spec.shape), uniform over (stream, start) in the window."""
        self._check_usable()
        ws, starts = plan_batch(self._seed, self._draws, self.batch, self.length, self.num_streams,
                                self._t, self._lo)
        out = self._gather(ws, starts, self.length)
        self._draws += 1
        if self.force_first:
            out["is_first"][:, 0] = True
        for m in range(self._draws, self._draws + self.cfg.prefetch):
            pw, ps = plan_batch(self._seed, m, self.batch, self.length, self.num_streams, self._t, self._lo)
            self._cache.warm(self._inner_keys(pw, ps, self.length))
        return out

    def read(self, stream: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Steps [start, stop) of one stream, each field (stop - start, *shape); must lie in the window."""
        if not (0 <= stream < self.num_streams and self._lo <= start <= stop <= self._t):
            raise ValueError(f"read: stream {stream} [{start}, {stop}) outside window "
                             f"[{self._lo}, {self._t})")
        out = self._gather(np.array([stream]), np.array([start]), stop - start)
        return {f: v[0] for f, v in out.items()}

    def _inner_keys(self, ws: np.ndarray, starts: np.ndarray, length: int) -> list[tuple[int, int]]:
        inner, done = self.codec.inner, self._k_hi * self.cfg.chunk
        keys = []
        for w, s in zip(ws.tolist(), starts.tolist(), strict=True):
            e = min(s + length, done)
            keys += [(w, g) for g in range(s // inner, -(-e // inner))] if e > s else []
        return keys

    def _gather(self, ws: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """Assemble sequences. Each inner chunk the batch touches is decoded once: straight into the batch
        when one sequence covers it whole, else into a per-thread buffer and copied to every sequence that
        needs part of it. Chunks already in the cache (prefetched) are copied; steps of the open tail are
        copied from RAM. Decodes are spread over the caller and the pool (zstd runs without the GIL)."""
        inner, done = self.codec.inner, self._k_hi * self.cfg.chunk
        out = {f: np.empty((len(ws), length, *s.shape), s.dtype) for f, s in self.schema.items()}
        uses: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}  # (w, g) -> [(b, a, z, at)]
        for b, (w, s) in enumerate(zip(ws.tolist(), starts.tolist(), strict=True)):
            e, end = s + length, min(s + length, done)
            for g in range(s // inner, -(-end // inner)) if end > s else ():
                a, z = max(s - g * inner, 0), min(end - g * inner, inner)
                uses.setdefault((w, g), []).append((b, a, z, g * inner + a - s))
            if e > max(s, done):
                p = max(s, done)
                for f in self.fields:
                    out[f][b, p - s:] = self._tail[f][w, p - done:e - done]
        hits = self._cache.get([key for key in uses if self._cache.has(key)])
        jobs = [(key, u) for key, u in uses.items() if key not in hits]

        def copy_hits() -> None:
            for key, fut in hits.items():
                self._scatter(fut.result(), uses[key], out)

        self._parallel(lambda job: self._fill(*job, out), jobs, copy_hits)
        return out

    def _fill(self, key: tuple[int, int], uses: list[tuple[int, int, int, int]],
              out: dict[str, np.ndarray]) -> None:
        inner = self.codec.inner
        if len(uses) == 1 and uses[0][1] == 0 and uses[0][2] == inner:
            b, _, _, at = uses[0]
            self._decode_into(*key, {f: out[f][b, at:at + inner] for f in self.fields})
            return
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = {f: np.empty((inner, *s.shape), s.dtype) for f, s in self.schema.items()}
        self._decode_into(*key, buf)
        self._scatter(buf, uses, out)

    def _scatter(self, chunk: dict[str, np.ndarray], uses: list[tuple[int, int, int, int]],
                 out: dict[str, np.ndarray]) -> None:
        for b, a, z, at in uses:
            for f in self.fields:
                out[f][b, at:at + z - a] = chunk[f][a:z]

    def _parallel(self, fn: Callable, jobs: list, caller_first: Callable[[], None]) -> None:
        """Run fn over jobs on the caller and up to `threads` pool workers pulling from one iterator; pool
        workers that have not started when the caller runs out of jobs are cancelled, so a pool busy with
        prefetch or a commit never delays a sample beyond the caller doing all the work itself."""
        it, errors = iter(jobs), []

        def drain() -> None:
            for job in it:  # list iterators hand out each item once, also across threads
                try:
                    fn(job)
                except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller
                    errors.append(e)

        helpers = [self._pool.submit(drain) for _ in range(min(self.cfg.io_threads, len(jobs) - 1))]
        try:
            caller_first()
        finally:
            drain()
            for h in helpers:
                if not h.cancel():
                    h.result()
        if errors:
            raise errors[0]

    # --- commit
    def commit(self, extra: dict, blobs: dict[str, bytes] | None = None, background: bool = False) -> int:
        """Publish the current state durably; returns the commit id. Waits for the previous commit first."""
        self.wait()
        self._check_usable()
        blobs = dict(blobs or {})
        for name, b in blobs.items():
            if not isinstance(name, str) or not isinstance(b, bytes | bytearray | memoryview):
                raise ValueError(f"commit: blob {name!r} must be str -> bytes, got {type(b).__name__}")
        try:
            extra = json.loads(json.dumps(extra))
        except (TypeError, ValueError) as e:
            raise ValueError(f"commit: extra is not JSON-serialisable: {e}") from e
        n = self._t - self._k_hi * self.cfg.chunk
        for j in range(n // self.codec.inner):  # after a restore these were never encoded; the shard reuses them
            if self._inner_enc.get(j, (None,))[0] != self._k_hi:
                self._inner_enc[j] = self._encode_inner(j)
        tail_inner = {w: [self._inner_enc[j][1][w] for j in range(n // self.codec.inner)]
                      for w in range(self.num_streams)}
        c = self._next_commit
        self._next_commit += 1
        snap = _Snapshot(
            commit=c, t=self._t, lo=self._lo, k_lo=self._k_lo, k_hi=self._k_hi,
            shards={k: self._shards[k] for k in range(self._k_lo, self._k_hi)},
            new=range(max(self._k_durable, self._k_lo), self._k_hi),
            # a background commit must not see later adds; a foreground one can read the tail in place
            tails={f: self._tail[f][:, :n].copy() if background else self._tail[f][:, :n] for f in self.fields},
            draws=self._draws,
            extra=extra, blobs={k: bytes(v) for k, v in blobs.items()}, tail_inner=tail_inner)
        if background:
            self._commit_fut = self._commit_exec.submit(self._do_commit, snap)
        else:
            self._do_commit(snap)
        return c

    def check_writer(self) -> None:
        """Raise WriterFencedError if a newer writer has taken over this run (one small read of the store)."""
        self._durable.check_writer(self.token, self._gen)

    def wait(self) -> None:
        """Join the background commit, re-raising its failure."""
        fut, self._commit_fut = self._commit_fut, None
        if fut is not None:
            fut.result()

    # --- restore
    def restore(self) -> Restored | None:
        """Bring the buffer to the newest durable commit whose chunks verify; None on a fresh store."""
        if self._t or self._draws:
            raise ReplayError("restore() must be called before any add() or sample()")
        d = self._durable
        ms = d.manifests()
        if not ms:
            self._scratch.sweep(range(0))
            return None
        listing = {**d.list_sizes(CHUNK_DIR), **d.list_sizes(PACK_DIR), **d.list_sizes(PAGE_DIR)}
        bad: set[str] = set()
        damaged: list[str] = []  # manifests that fail their own checks
        first_err: CorruptChunkError | None = None
        parsed: dict[str, dict] = {}
        self.skipped = []
        for _c, _g, mkey in ms:
            try:
                m = read_manifest(d, mkey)
            except CorruptChunkError as e:  # damaged, or gone since listed: an older commit may still restore
                self._skip(e)
                damaged.append(mkey)
                continue
            check_compatible(m, mkey, self.schema, self.num_streams, self.cfg.chunk, self.cfg.inner,
                             self.cfg.codec)
            if {p[0] for p in m.get("pages", [])} & (bad | self._corrupt.keys()):
                continue
            try:
                m = self._load_pages(m, mkey)
            except CorruptChunkError as e:
                bad.add(e.key)
                first_err = first_err or e
                self._skip(e)
                continue
            parsed[mkey] = m
            keys = object_keys(m)
            if keys.keys() & (bad | self._corrupt.keys()):
                continue
            try:
                for key, size in keys.items():
                    if listing.get(key) != size:
                        found = "is missing" if key not in listing else f"has {listing[key]} bytes instead of {size}"
                        what = {PACK_DIR: "pack", PAGE_DIR: "page"}.get(key.split("/", 1)[0], "chunk")
                        problem = "missing" if key not in listing else \
                            "truncated" if listing[key] < size else "size mismatch"
                        raise CorruptChunkError(f"durable {what} {d.url}/{key} referenced by manifest {mkey} "
                                                f"{found}", key=key, manifest=mkey, kind=what, problem=problem)
                blobs, extra = self._load(m, mkey)
                if not self.cfg.lazy:
                    jobs = [(w, k) for k in range(self._k_lo, self._k_hi) for w in range(self.num_streams)]
                    # every fetch ends before the next manifest is tried: none may write scratch or flag an
                    # error for this one after that
                    futs = [self._pool.submit(self._ensure_local, *wk) for wk in jobs]
                    err = next((e for e in [f.exception() for f in futs] if e is not None), None)
                    if err is not None:
                        raise err
            except CorruptChunkError as e:
                bad.add(e.key)
                first_err = first_err or e
                self._skip(e)
                self._reset_state()
                self._bg_error = None  # a fetch that found it during a full restore: this manifest is skipped
                continue
            self._manifest_keys[mkey] = frozenset(keys)
            self._bad_keys = bad | set(self._corrupt)
            self._sweep_durable(ms, parsed, listing)
            self._scratch.sweep(range(self._k_lo, self._k_hi))
            if self.cfg.lazy:
                self._pinned = frozenset(k for _, _, k in ms)
                self._lazy_thread = threading.Thread(target=self._lazy_fetch, name="replay-lazy", daemon=True)
                self._lazy_thread.start()
            return Restored(m["commit"], extra, blobs)
        unusable = sorted(bad | set(self._corrupt)) + damaged
        first_err = first_err or next(iter(self.skipped), None)
        if unusable:
            # `from None`: the job requeues on a CorruptChunkError anywhere in the chain, and here no attempt can
            # do better (each restore would list the same store)
            raise NoRestorableCommitError(
                f"none of the {len(ms)} commits in {d.url} can be restored: each is damaged or references a "
                f"corrupt or missing object ({', '.join(unusable[:3])}{', ...' if len(unusable) > 3 else ''}); "
                f"first found: {first_err}. "
                f"Damaged bytes and their records are under {d.url}/quarantine/. Put a good copy of the object back "
                "under its key, or start the run afresh (a new sweep name or durable folder).",
                keys=tuple(unusable)) from None
        raise DurableStoreError(f"no readable manifest among {len(ms)} in {d.url}")

    def _skip(self, e: CorruptChunkError) -> None:
        """Record (and log) an object that made restore pass over a commit: `skipped` after restore()."""
        self.skipped.append(e)
        log.warning("restore skips %s: %s", e.manifest or e.key, e)

    # --- shutdown
    def close(self) -> None:
        """Wait for the background commit (re-raising its failure) and stop every thread."""
        self._closing.set()
        try:
            self.wait()
        finally:
            if self._lazy_thread is not None:
                self._lazy_thread.join()
            self._commit_exec.shutdown(wait=True)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._scratch_lock.release()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
            _pack, part = read_pack(d, m, mkey)
        except (DurableStoreError, CorruptChunkError, ValueError) as e:
            errors.append(f"{mkey}: {e}")
            continue
        return Restored(m["commit"], m["extra"], commit_blobs(m, part))
    if errors:
        raise DurableStoreError(f"none of the {len(ms)} commits in {durable} could be read; newest: {errors[0]}")
    return None
