"""Commits: a snapshot of the window, the objects it adds to the durable tier (new chunk objects, pages, the
pack), its manifest published last, then garbage collection of what no kept manifest references."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from .codec import checksum
from .config import schema_to_json
from .durable import chunk_key, manifest_key, pack_key
from .errors import CorruptChunkError, ReplayError, WriterFencedError
from .integrity import read_manifest, seal
from .manifest import (
    FORMAT_OF_CODEC,
    Head,
    Segment,
    ShardInfo,
    encode_heads,
    encode_page,
    encode_tables,
    head_m,
    inline_rows,
    load_pages,
    object_keys,
    plan_pages,
    shard_keys,
)
from .records import Manifest, PackEntry, PackRef, PageRef, SamplerState
from .state import Context, Health, Window
from .tail import Tail


class Snapshot(NamedTuple):
    """What a commit publishes, taken in the caller's thread; a background commit works from this alone."""

    commit: int
    t: int
    lo: int
    k_lo: int
    k_hi: int
    shards: dict[int, ShardInfo]
    new: range  # shards to upload
    tails: dict[str, np.ndarray]  # field -> (W, n, *shape), n = t - k_hi * chunk
    draws: int
    extra: dict
    blobs: dict[str, bytes]
    # per stream, the jobs that encoded the tail's full inner chunks (encode_inner of every field, in order)
    tail_inner: dict[int, list]


class Committer:
    def __init__(self, ctx: Context, win: Window, health: Health, tail: Tail, page_cache: dict[str, dict],
                 next_commit: int, *, batch: int, length: int, force_first: bool):
        self.ctx, self.win, self.health, self.tail = ctx, win, health, tail
        self.page_cache = page_cache  # pages read or written (write-once: never stale)
        self.next_commit = next_commit
        self.batch, self.length, self.force_first = batch, length, force_first
        self.exec = ThreadPoolExecutor(1, thread_name_prefix="replay-commit")
        self.fut: Future | None = None
        self._shard_keys: dict[str, dict[int, frozenset[str]]] = {}  # page -> shard -> keys of its objects
        self.stats: dict = {}

    def commit(self, extra: dict, blobs: dict[str, bytes] | None, background: bool) -> int:
        """Publish the current state durably; returns the commit id. Waits for the previous commit first."""
        self.wait()
        self.health.check_usable()
        blobs = dict(blobs or {})
        for name, b in blobs.items():
            if not isinstance(name, str) or not isinstance(b, bytes | bytearray | memoryview):
                raise ValueError(f"commit: blob {name!r} must be str -> bytes, got {type(b).__name__}")
        try:
            extra = json.loads(json.dumps(extra))
        except (TypeError, ValueError) as e:
            raise ValueError(f"commit: extra is not JSON-serialisable: {e}") from e
        win = self.win
        n = win.t - win.k_hi * self.ctx.cfg.chunk
        tail_inner = self.tail.encoded(n)
        c = self.next_commit
        self.next_commit += 1
        snap = Snapshot(
            commit=c, t=win.t, lo=win.lo, k_lo=win.k_lo, k_hi=win.k_hi,
            shards={k: win.shards[k] for k in range(win.k_lo, win.k_hi)},
            new=range(max(win.k_durable, win.k_lo), win.k_hi),
            # a background commit must not see later adds; a foreground one can read the tail in place
            tails={f: a[:, :n].copy() if background else a[:, :n] for f, a in self.tail.arrays.items()},
            draws=win.draws,
            extra=extra, blobs={k: bytes(v) for k, v in blobs.items()}, tail_inner=tail_inner)
        if background:
            self.fut = self.exec.submit(self._publish, snap)
        else:
            self._publish(snap)
        return c

    def wait(self) -> None:
        """Join the background commit, re-raising its failure."""
        fut, self.fut = self.fut, None
        if fut is not None:
            fut.result()

    def idle(self) -> bool:
        return self.fut is None or self.fut.done()

    def check_writer(self) -> None:
        self.ctx.durable.check_writer(self.ctx.token, self.ctx.gen)

    def _publish(self, s: Snapshot) -> None:
        ctx, win, health = self.ctx, self.win, self.health
        t0, d, W, token, gen, codec = time.perf_counter(), ctx.durable, ctx.num_streams, ctx.token, ctx.gen, ctx.codec
        self.check_writer()
        # shard -> stream -> segments: each finished shard's that stay, and below, those of the shards finished
        # now and of the open one; the open shard at the last commit may finish now, and its segments with it
        heads = {k: dict(v) for k, v in win.heads.items() if s.k_lo <= k < s.k_hi and k != win.open_k}
        opened = dict(win.heads.get(win.open_k, {})) if win.open_k >= s.k_lo else {}

        def upload(w: int, k: int) -> tuple[str, int]:
            info = s.shards[k]
            parts = [ctx.scratch.read(f, w, k) for f in ctx.fields]
            if any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                raise CorruptChunkError(f"scratch shard {k} of stream {w} changed since it was written; "
                                        "nothing was published", key=f"scratch:{w}/{k}", manifest="(commit)")
            head = opened.get(w, ()) if k == win.open_k else heads.get(k, {}).get(w, ())
            if head:  # earlier packs hold this shard's first inner chunks: the object skips them
                cut = [codec.split_head(p, head_m(head)) for p in parts]
                if _same_frames(head, [frames for frames, _ in cut]):
                    parts = [p[n:] for p, (_, n) in zip(parts, cut, strict=True)]
                else:  # encoded differently since (another zstd build): write the whole shard
                    head = ()
            heads.setdefault(k, {})[w] = head
            key = chunk_key(w, k, int(info.obj[w]), head_m(head))
            d.put(key, parts, fsync=False)  # flushed together below, before the manifest
            return key, sum(map(len, parts))

        # This thread starts uploading at once and pool workers join as they come free: submitted to the pool
        # alone, the uploads queued behind add()'s pending inner-chunk encodes.
        uploads: list[tuple[str, int]] = []
        ctx.parallel(lambda wk: uploads.append(upload(*wk)), [(w, k) for k in s.new for w in range(W)],
                     lambda: None)
        n = s.t - s.k_hi * ctx.cfg.chunk
        prev = opened if win.open_k == s.k_hi else {}
        m_prev, m_full = head_m(prev.get(0, ())), n // codec.inner
        assert all(head_m(prev.get(w, ())) == m_prev <= m_full for w in range(W)), (prev, m_full)
        # Per stream: the frames of the open shard's full inner chunks no earlier pack holds (one segment),
        # then one frame per field for the steps after them.
        entries: dict[str, PackEntry] = {}
        parts, off, new_segs = [], 0, {}
        for w in range(W):
            jobs = s.tail_inner.get(w, [])[m_prev:m_full]
            if jobs:
                frames = [b"".join(job.result()[j][:-4] for job in jobs) for j in range(len(ctx.fields))]
                block = b"".join(frames)
                new_segs[w] = (off, tuple(map(len, frames)), checksum(block))
                parts.append(block)
                off += len(block)
            for f in ctx.fields if n > m_full * codec.inner else ():
                enc = codec.encode_tail(s.tails[f][w, m_full * codec.inner:])
                parts.append(enc)
                entries[f"tail/{w}/{f}"] = PackEntry(off, len(enc), checksum(enc))
                off += len(enc)
        for name, b in sorted(s.blobs.items()):
            parts.append(b)
            entries[f"blob/{name}"] = PackEntry(off, len(b), checksum(b))
            off += len(b)
        pack = b"".join(parts)
        pkey = pack_key(s.commit, gen)
        if m_full:
            heads[s.k_hi] = {w: (*prev.get(w, ()), *([Segment(pkey, len(pack), m_full - m_prev, *new_segs[w])]
                                                      if w in new_segs else [])) for w in range(W)}
        heads = {k: v for k, v in heads.items() if any(v.values())}
        pages, new_pages = plan_pages(win.pages, s.k_lo, s.k_hi, ctx.cfg.table_page)
        new_keys, page_bytes = [k for k, _ in uploads], 0
        for k0, k1 in new_pages:
            doc, page, ref = encode_page(s.shards, heads, k0, k1, W, len(ctx.fields))
            d.put(ref.key, page, fsync=False)
            self.page_cache[ref.key] = doc
            pages.append(ref)
            new_keys.append(ref.key)
            page_bytes += len(page)
        inline = max(s.k_lo, pages[-1].k1) if pages else s.k_lo
        d.put(pkey, pack, fsync=False)
        d.sync([*new_keys, pkey])
        cfg = ctx.cfg
        rec = Manifest(
            format=FORMAT_OF_CODEC[cfg.codec], commit=s.commit, generation=gen, writer=token, time=time.time(),
            schema=schema_to_json(ctx.schema), num_streams=W, chunk=cfg.chunk, inner=cfg.inner, codec=cfg.codec,
            zstd_level=cfg.zstd_level, capacity=cfg.capacity, t=s.t, lo=s.lo, k_lo=s.k_lo, k_hi=s.k_hi,
            pages=tuple(pages), rows_lo=inline, tables=encode_tables(s.shards, inline, s.k_hi),
            heads=encode_heads(heads, inline, s.k_hi), pack=PackRef(pkey, len(pack), checksum(pack), entries),
            sampler=SamplerState(win.seed, s.draws, self.batch, self.length, self.force_first),
            blobs=tuple(sorted(s.blobs)), extra=s.extra)
        manifest = rec.to_json()
        body = seal(manifest)
        mkey = manifest_key(s.commit, gen)
        # Fencing: the token is read again once every byte of the commit is durable, right before the manifest
        # appears (locally two syscalls later; elsewhere one create-only PUT later), and the manifest never
        # replaces another. What is left: a writer taking over inside that gap still sees this manifest appear
        # after its own take-over. It is a complete, verified commit of the same run, so a restore may use it;
        # this writer learns of the fence at the check below and collects no garbage (a fenced writer's GC could
        # drop the manifest the new writer restored). take_over() itself is a read-then-write of writer.json:
        # two writers taking over at the same instant may both get generation g+1; the last writer.json wins,
        # the other is fenced at its next check, and the exclusive create keeps their manifests apart.
        try:
            d.publish(mkey, body, check=self.check_writer)
        except FileExistsError as e:
            raise WriterFencedError(f"manifest {d.url}/{mkey} already exists: another writer of generation "
                                    f"{gen} published commit {s.commit}; commit aborted") from e
        d.sync_dirs([mkey])
        win.k_durable = max(win.k_durable, s.k_hi)
        win.last_commit = s.commit
        win.manifest_keys[mkey] = self._window_keys(manifest, rec.pages)
        win.heads, win.open_k, win.pages = heads, s.k_hi, tuple(pages)
        health.bad_keys -= set(new_keys)  # a quarantined key written afresh from verified scratch
        new_bytes = sum(n for _, n in uploads)
        self.stats.update(last_commit_s=time.perf_counter() - t0, last_commit_chunk_bytes=new_bytes,
                          last_commit_bytes=new_bytes + len(pack) + len(body) + page_bytes,
                          last_commit_pack_bytes=len(pack), last_commit_page_bytes=page_bytes,
                          last_commit_manifest_bytes=len(body))
        try:
            self.check_writer()
        except WriterFencedError as e:
            raise WriterFencedError(f"commit {s.commit} was published as {mkey}, but {e}; no garbage collected"
                                    ) from e
        self._gc()

    def _window_keys(self, m: dict, pages: tuple[PageRef, ...]) -> frozenset[str]:
        """object_keys() of this writer's manifest `m`, from its inline rows and each page's keys per shard
        (worked out once per page): a commit's bookkeeping stays proportional to its new rows."""
        keys = set(object_keys(inline_rows(m)))  # inline rows, their packs, the page references
        self._shard_keys = {p.key: self._shard_keys.get(p.key) or shard_keys(self.page_cache[p.key])
                            for p in pages}
        for per_k in self._shard_keys.values():
            for k, ks in per_k.items():
                if k >= m["k_lo"]:
                    keys |= ks
        return frozenset(keys)

    def _keys_of(self, mkey: str) -> frozenset[str]:
        win, d = self.win, self.ctx.durable
        if mkey not in win.manifest_keys:
            m = read_manifest(d, mkey)
            try:
                m = load_pages(d, m, mkey, self.page_cache)
            except CorruptChunkError as e:
                # restorable never again: its own objects and the page, which makes it count as bad; the rows
                # the page held are lost with it (objects only they name stay until a sweep at restore)
                with self.health.lock:
                    self.health.bad_keys |= {e.key}
                m = inline_rows(m)
            win.manifest_keys[mkey] = frozenset(object_keys(m))
        return win.manifest_keys[mkey]

    def _keys_or_none(self, mkey: str) -> frozenset[str] | None:
        try:
            return self._keys_of(mkey)
        except (ReplayError, ValueError, KeyError):  # unreadable, or a page missing or damaged
            return None

    def _gc(self) -> None:
        """Drop manifests older than the newest `keep` restorable ones, then their packs and the chunks no kept one
        references. A manifest with a known bad chunk does not count towards `keep` (it cannot be restored), and
        the manifests a lazy restore pinned are kept until its chunks are verified: until then a corrupt inherited
        chunk may still show up in every newer commit, and they are the fallbacks."""
        d, health, pinned = self.ctx.durable, self.health, self.health.pinned
        ms = d.manifests()
        n = good = 0
        while n < len(ms) and good < self.ctx.cfg.keep:
            keys = self._keys_or_none(ms[n][2])
            good += keys is not None and not keys & health.bad_keys
            n += 1
        kept = ms[:n] + [m for m in ms[n:] if m[2] in pinned]
        dropped = [m for m in ms[n:] if m[2] not in pinned]
        kept_keys = [self._keys_or_none(k) for _, _, k in kept]
        if not dropped or None in kept_keys:  # a kept manifest we cannot read now: delete nothing it may need
            return
        live = frozenset().union(*kept_keys)
        for c, g, mkey in dropped:
            try:
                keys = self._keys_of(mkey)
            except (ReplayError, ValueError, KeyError):
                keys = frozenset()
            d.delete([mkey])
            # a pack stays while a kept manifest's shard starts with frames from it
            d.delete(sorted(({pack_key(c, g)} | keys) - live))
            self.win.manifest_keys.pop(mkey, None)

    def close(self) -> None:
        self.exec.shutdown(wait=True)


def _same_frames(head: Head, frames: list[list[bytes]]) -> bool:
    """Whether a shard's first inner chunks (frames per field, from scratch) are what its segments hold."""
    i = 0
    for g in head:
        got = [b"".join(fr[i:i + g.m]) for fr in frames]
        if tuple(map(len, got)) != g.nbytes or checksum(b"".join(got)) != g.crc:
            return False
        i += g.m
    return True
