"""Finished shards on scratch: make one present and verified, fetching it from the durable tier when it is not;
the background fetch of a lazy restore."""

from __future__ import annotations

import threading

from .codec import checksum
from .durable import chunk_key
from .errors import CorruptChunkError, DurableStoreError, ReplayError
from .manifest import ShardInfo, head_file_bytes, head_m, join_shard, read_segments
from .state import Context, Health, Window


class Chunks:
    def __init__(self, ctx: Context, win: Window, health: Health):
        self.ctx, self.win, self.health = ctx, win, health
        self.lazy_thread: threading.Thread | None = None

    def ensure_local(self, w: int, k: int) -> None:
        """Make shard (w, k) of every field present and verified on scratch, fetching it if needed."""
        win, lock = self.win, self.health.lock
        while True:
            with lock:
                st = win.local.get((w, k))
                if st is True:
                    return
                if k not in win.shards:
                    raise ReplayError(f"shard {k} of stream {w} is outside the window [{win.k_lo}, {win.k_hi})")
                info = win.shards[k]
                if st is None:
                    ev = threading.Event()
                    win.local[(w, k)] = ev
                    break
            st.wait()
        try:
            self._materialize(w, k, info)
            with lock:
                if (w, k) in win.local:
                    win.local[(w, k)] = True
        except BaseException:
            with lock:
                if win.local.get((w, k)) is ev:
                    del win.local[(w, k)]
            raise
        finally:
            ev.set()

    def _materialize(self, w: int, k: int, info: ShardInfo) -> None:
        sc = self.ctx.scratch
        if all(sc.verify(f, w, k, int(info.size[w, j]), int(info.crc[w, j])) for j, f in enumerate(self.ctx.fields)):
            return
        parts = self._fetch(w, k, info)
        for f, p in zip(self.ctx.fields, parts, strict=True):
            sc.write(f, w, k, p)

    def _fetch(self, w: int, k: int, info: ShardInfo) -> list[bytes]:
        """Durable shard (w, k) as verified per-field shard files: its chunk object, after the frames of its
        segments where it has some.

        An object that fails its checksum twice (the second read tells a torn transfer from damage at rest) is
        moved to quarantine/, so that the next restore() falls back past every manifest that references it, and
        the replay becomes unusable: its commits would reference the same object. CorruptChunkError names both.
        """
        d, mkey, ctx, health = self.ctx.durable, self.win.restored_from, self.ctx, self.health
        head = self.win.heads.get(k, {}).get(w, ())
        key = chunk_key(w, k, int(info.obj[w]), head_m(head))
        with health.lock:
            known = next((health.corrupt[x] for x in [key, *(g.pack for g in head)] if x in health.corrupt), None)
        if known is not None:
            raise CorruptChunkError(str(known), key=known.key, manifest=known.manifest)
        where = {key: f"durable chunk {d.url}/{key} referenced by manifest {mkey}"}
        where.update({g.pack: f"pack {d.url}/{g.pack}, holding inner chunks of shard {k} of stream {w} for "
                              f"manifest {mkey}," for g in head})

        def corrupt(msg: str, bad: str) -> CorruptChunkError:
            return health.mark_corrupt(CorruptChunkError(msg, key=bad, manifest=mkey), k, self.win)

        bad = key
        for _ in range(2):
            try:
                data = d.get(key)
                got, bad = read_segments(d, list(head))
            except DurableStoreError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
                # gone since restore() listed it (quarantined by another copy of the job, or deleted)
                raise corrupt(f"{where[key]} is missing (quarantined or deleted after this restore)", key) from e
            if bad is not None and not d.exists(bad):
                raise corrupt(f"{where[bad]} is missing (quarantined or deleted after this restore)", bad)
            if bad is not None:
                continue
            bad, parts = key, join_shard(ctx.codec, data, info.size[w], head, got, where[key])
            if parts is not None and all(checksum(p) == int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                return parts
        record = {"manifest": mkey, "writer": ctx.token, "generation": ctx.gen, "stream": w, "shard": k}
        if bad == key:
            record.update(nbytes=len(data), expected_nbytes=int(info.size[w].sum()) - sum(
                head_file_bytes(head, j) for j in range(len(ctx.fields))))
        try:
            moved = f"moved to {d.url}/{d.quarantine(bad, record)}; the next restore falls back to the newest " \
                    "commit without it"
        except DurableStoreError as e:
            moved = f"and could not be quarantined ({e}): the next restore will fetch it again"
        raise corrupt(f"{where[bad]} failed its checksum twice; {moved}", bad)

    def fetch_all(self) -> None:
        """Every shard of the window onto scratch, in the pool; returns when every fetch has ended, raising the
        first failure (none may write scratch or flag an error after that)."""
        jobs = [(w, k) for k in range(self.win.k_lo, self.win.k_hi) for w in range(self.ctx.num_streams)]
        futs = [self.ctx.pool.submit(self.ensure_local, *wk) for wk in jobs]
        err = next((e for e in [f.exception() for f in futs] if e is not None), None)
        if err is not None:
            raise err

    def start_lazy(self, pinned: frozenset[str]) -> None:
        """Fetch the window in the background; GC keeps the `pinned` manifests until every chunk is verified."""
        self.health.pinned = pinned
        self.lazy_thread = threading.Thread(target=self._lazy_fetch, name="replay-lazy", daemon=True)
        self.lazy_thread.start()

    def _lazy_fetch(self) -> None:
        """Background half of a lazy restore: fetch every shard not yet on scratch, newest first. Any failure
        reaches the caller at its next add, sample or commit (a shard evicted meanwhile is no longer needed)."""
        win, health = self.win, self.health
        k = win.k_hi
        try:
            for k in range(win.k_hi - 1, win.k_lo - 1, -1):
                for w in range(self.ctx.num_streams):
                    if health.closing.is_set():
                        return
                    if k < win.k_lo:
                        break
                    self.ensure_local(w, k)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, never swallowed
            if not health.closing.is_set() and (k >= win.k_lo or not isinstance(e, ReplayError)):
                with health.lock:
                    health.bg_error = health.bg_error or e
            return
        health.pinned = frozenset()  # every inherited chunk verified or evicted: GC may drop the fallbacks

    def join(self) -> None:
        if self.lazy_thread is not None:
            self.lazy_thread.join()
