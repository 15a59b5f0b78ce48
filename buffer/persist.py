"""Commit and restore internals of `Replay` (a mixin: same object, kept apart to keep files short)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .codec import checksum
from .config import schema_to_json
from .durable import PACK_DIR, PAGE_DIR, Durable, chunk_key, manifest_key, pack_key
from .errors import CorruptChunkError, DurableStoreError, ReplayError, WriterFencedError
from .integrity import read_manifest, seal
from .manifest import (
    FORMAT_OF_CODEC,
    Head,
    Segment,
    ShardInfo,
    decode_heads,
    decode_tables,
    encode_heads,
    encode_page,
    encode_tables,
    head_fields,
    head_file_bytes,
    head_m,
    inline_rows,
    join_shard,
    load_pages,
    object_keys,
    plan_pages,
    read_segments,
    shard_keys,
)


class _Snapshot(NamedTuple):
    commit: int
    t: int
    lo: int
    k_lo: int
    k_hi: int
    shards: dict[int, ShardInfo]
    new: range  # shards to upload
    tails: dict[str, np.ndarray]  # field -> (W, n, *shape) copy
    draws: int
    extra: dict
    blobs: dict[str, bytes]
    # per stream, the jobs that encoded the tail's full inner chunks (encode_inner of every field, in order)
    tail_inner: dict[int, list] | None = None


def read_pack(d: Durable, m: dict, mkey: str) -> tuple[bytes, Callable[[str], bytes]]:
    """The pack of manifest `m`, verified, and a reader of its named parts (`blob/<name>`, `tail/<w>/<field>`).
    A lost or damaged pack is a bad commit like a corrupt chunk: CorruptChunkError, so a restore falls back."""
    pk = m["pack"]
    try:
        pack = d.get(pk["key"])
    except DurableStoreError as e:
        raise CorruptChunkError(f"pack {d.url}/{pk['key']} of manifest {mkey} is missing or unreadable: {e}",
                                key=pk["key"], manifest=mkey, kind="pack", problem="missing") from e
    if len(pack) != pk["nbytes"] or checksum(pack) != pk["crc"]:
        what = "truncated" if len(pack) < pk["nbytes"] else "checksum mismatch"
        raise CorruptChunkError(f"pack {d.url}/{pk['key']} of manifest {mkey} failed its checksum ({what}: "
                                f"{len(pack)} of {pk['nbytes']} bytes)", key=pk["key"], manifest=mkey, kind="pack",
                                problem=what)
    entries = pk["entries"]

    def part(name: str) -> bytes:
        off, n, crc = entries[name][:3]
        assert checksum(pack[off:off + n]) == crc, (name, mkey)  # the pack checksum already covers it
        return pack[off:off + n]

    return pack, part


def commit_blobs(m: dict, part: Callable[[str], bytes]) -> dict[str, bytes]:
    """The caller's blobs of a commit, by name."""
    return {name: part(f"blob/{name}") for name in m["blobs"]}


class Persistence:
    """Durable-side methods of Replay; every attribute used here is set by Replay.__init__."""

    def _do_commit(self, s: _Snapshot) -> None:
        t0, d, W = time.perf_counter(), self._durable, self.num_streams
        d.check_writer(self.token, self._gen)
        # shard -> stream -> segments: each finished shard's that stay, and below, those of the shards finished
        # now and of the open one; the open shard at the last commit may finish now, and its segments with it
        heads = {k: dict(v) for k, v in self._heads.items() if s.k_lo <= k < s.k_hi and k != self._open_k}
        opened = dict(self._heads.get(self._open_k, {})) if self._open_k >= s.k_lo else {}

        def upload(w: int, k: int) -> tuple[str, int]:
            info = s.shards[k]
            parts = [self._scratch.read(f, w, k) for f in self.fields]
            if any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                raise CorruptChunkError(f"scratch shard {k} of stream {w} changed since it was written; "
                                        "nothing was published", key=f"scratch:{w}/{k}", manifest="(commit)")
            head = opened.get(w, ()) if k == self._open_k else heads.get(k, {}).get(w, ())
            if head:  # earlier packs hold this shard's first inner chunks: the object skips them
                cut = [self.codec.split_head(p, head_m(head)) for p in parts]
                if self._same_frames(head, [frames for frames, _ in cut]):
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
        self._parallel(lambda wk: uploads.append(upload(*wk)), [(w, k) for k in s.new for w in range(W)],
                       lambda: None)
        n = s.t - s.k_hi * self.cfg.chunk
        prev = opened if self._open_k == s.k_hi else {}
        m_prev, m_full = head_m(prev.get(0, ())), n // self.codec.inner
        assert all(head_m(prev.get(w, ())) == m_prev <= m_full for w in range(W)), (prev, m_full)
        # Per stream: the frames of the open shard's full inner chunks no earlier pack holds (one segment),
        # then one frame per field for the steps after them.
        entries, parts, off, new_segs = {}, [], 0, {}
        for w in range(W):
            jobs = (s.tail_inner or {}).get(w, [])[m_prev:m_full]
            if jobs:
                frames = [b"".join(job.result()[j][:-4] for job in jobs) for j in range(len(self.fields))]
                block = b"".join(frames)
                new_segs[w] = (off, tuple(map(len, frames)), checksum(block))
                parts.append(block)
                off += len(block)
            for f in self.fields if n > m_full * self.codec.inner else ():
                enc = self.codec.encode_tail(s.tails[f][w, m_full * self.codec.inner:])
                parts.append(enc)
                entries[f"tail/{w}/{f}"] = [off, len(enc), checksum(enc)]
                off += len(enc)
        for name, b in sorted(s.blobs.items()):
            parts.append(b)
            entries[f"blob/{name}"] = [off, len(b), checksum(b)]
            off += len(b)
        pack = b"".join(parts)
        pkey = pack_key(s.commit, self._gen)
        if m_full:
            heads[s.k_hi] = {w: (*prev.get(w, ()), *([Segment(pkey, len(pack), m_full - m_prev, *new_segs[w])]
                                                      if w in new_segs else [])) for w in range(W)}
        heads = {k: v for k, v in heads.items() if any(v.values())}
        pages, new_pages = plan_pages(self._pages, s.k_lo, s.k_hi, self.cfg.table_page)
        new_keys, page_bytes = [k for k, _ in uploads], 0
        for k0, k1 in new_pages:
            doc, page, ref = encode_page(s.shards, heads, k0, k1, W, len(self.fields))
            d.put(ref[0], page, fsync=False)
            self._page_cache[ref[0]] = doc
            pages.append(ref)
            new_keys.append(ref[0])
            page_bytes += len(page)
        inline = max(s.k_lo, pages[-1][4]) if pages else s.k_lo
        d.put(pkey, pack, fsync=False)
        d.sync([*new_keys, pkey])
        manifest = {
            "format": FORMAT_OF_CODEC[self.cfg.codec], "commit": s.commit, "generation": self._gen,
            "writer": self.token, "time": time.time(), "schema": schema_to_json(self.schema), "num_streams": W,
            "chunk": self.cfg.chunk, "inner": self.cfg.inner, "codec": self.cfg.codec,
            "zstd_level": self.cfg.zstd_level,
            "capacity": self.cfg.capacity, "t": s.t, "lo": s.lo, "k_lo": s.k_lo, "k_hi": s.k_hi,
            "pages": pages, "rows_lo": inline,
            "tables": encode_tables(s.shards, inline, s.k_hi), "heads": encode_heads(heads, inline, s.k_hi),
            "pack": {"key": pkey, "nbytes": len(pack), "crc": checksum(pack), "entries": entries},
            "sampler": {"seed": self._seed, "draws": s.draws, "batch": self.batch, "length": self.length,
                        "force_first": self.force_first},
            "blobs": sorted(s.blobs), "extra": s.extra,
        }
        body = seal(manifest)
        mkey = manifest_key(s.commit, self._gen)
        # Fencing: the token is read again once every byte of the commit is durable, right before the manifest
        # appears (locally two syscalls later; elsewhere one create-only PUT later), and the manifest never
        # replaces another. What is left: a writer taking over inside that gap still sees this manifest appear
        # after its own take-over. It is a complete, verified commit of the same run, so a restore may use it;
        # this writer learns of the fence at the check below and collects no garbage (a fenced writer's GC could
        # drop the manifest the new writer restored). take_over() itself is a read-then-write of writer.json:
        # two writers taking over at the same instant may both get generation g+1; the last writer.json wins,
        # the other is fenced at its next check, and the exclusive create keeps their manifests apart.
        try:
            d.publish(mkey, body, check=lambda: d.check_writer(self.token, self._gen))
        except FileExistsError as e:
            raise WriterFencedError(f"manifest {d.url}/{mkey} already exists: another writer of generation "
                                    f"{self._gen} published commit {s.commit}; commit aborted") from e
        d.sync_dirs([mkey])
        self._k_durable = max(self._k_durable, s.k_hi)
        self._last_commit = s.commit
        self._manifest_keys[mkey] = self._window_keys(manifest)
        self._heads, self._open_k, self._pages = heads, s.k_hi, pages
        self._bad_keys -= set(new_keys)  # a quarantined key written afresh from verified scratch
        new_bytes = sum(n for _, n in uploads)
        self.stats.update(last_commit_s=time.perf_counter() - t0, last_commit_chunk_bytes=new_bytes,
                          last_commit_bytes=new_bytes + len(pack) + len(body) + page_bytes,
                          last_commit_pack_bytes=len(pack), last_commit_page_bytes=page_bytes,
                          last_commit_manifest_bytes=len(body))
        try:
            d.check_writer(self.token, self._gen)
        except WriterFencedError as e:
            raise WriterFencedError(f"commit {s.commit} was published as {mkey}, but {e}; no garbage collected"
                                    ) from e
        self._gc()

    def _same_frames(self, head: Head, frames: list[list[bytes]]) -> bool:
        """Whether a shard's first inner chunks (frames per field, from scratch) are what its segments hold."""
        i = 0
        for g in head:
            got = [b"".join(fr[i:i + g.m]) for fr in frames]
            if tuple(map(len, got)) != g.nbytes or checksum(b"".join(got)) != g.crc:
                return False
            i += g.m
        return True

    def _window_keys(self, m: dict) -> frozenset[str]:
        """object_keys() of this writer's manifest `m`, from its inline rows and each page's keys per shard
        (worked out once per page): a commit's bookkeeping stays proportional to its new rows."""
        keys = set(object_keys(inline_rows(m)))  # inline rows, their packs, the page references
        self._shard_keys = {p[0]: self._shard_keys.get(p[0]) or shard_keys(self._page_cache[p[0]])
                            for p in m["pages"]}
        for per_k in self._shard_keys.values():
            for k, ks in per_k.items():
                if k >= m["k_lo"]:
                    keys |= ks
        return frozenset(keys)

    def _keys_of(self, mkey: str) -> frozenset[str]:
        if mkey not in self._manifest_keys:
            m = read_manifest(self._durable, mkey)
            try:
                m = load_pages(self._durable, m, mkey, self._page_cache)
            except CorruptChunkError as e:
                # restorable never again: its own objects and the page, which makes it count as bad; the rows
                # the page held are lost with it (objects only they name stay until a sweep at restore)
                with self._lock:
                    self._bad_keys |= {e.key}
                m = inline_rows(m)
            self._manifest_keys[mkey] = frozenset(object_keys(m))
        return self._manifest_keys[mkey]

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
        ms = self._durable.manifests()
        n = good = 0
        while n < len(ms) and good < self.cfg.keep:
            keys = self._keys_or_none(ms[n][2])
            good += keys is not None and not keys & self._bad_keys
            n += 1
        kept = ms[:n] + [m for m in ms[n:] if m[2] in self._pinned]
        dropped = [m for m in ms[n:] if m[2] not in self._pinned]
        kept_keys = [self._keys_or_none(k) for _, _, k in kept]
        if not dropped or None in kept_keys:  # a kept manifest we cannot read now: delete nothing it may need
            return
        live = frozenset().union(*kept_keys)
        for c, g, mkey in dropped:
            try:
                keys = self._keys_of(mkey)
            except (ReplayError, ValueError, KeyError):
                keys = frozenset()
            self._durable.delete([mkey])
            # a pack stays while a kept manifest's shard starts with frames from it
            self._durable.delete(sorted(({pack_key(c, g)} | keys) - live))
            self._manifest_keys.pop(mkey, None)

    def _load_pages(self, m: dict, mkey: str) -> dict:
        """load_pages() for restore: a page that fails its checksum is read again (a torn transfer passes then)
        and, failing twice, moved to quarantine/ like a chunk. CorruptChunkError names it either way."""
        d = self._durable
        try:
            return load_pages(d, m, mkey, self._page_cache)
        except CorruptChunkError as e:
            if not d.exists(e.key):
                raise
            first = e
        try:
            return load_pages(d, m, mkey, self._page_cache)
        except CorruptChunkError as e:
            if e.key != first.key:
                raise
            try:
                where = f"moved to {d.url}/" + d.quarantine(e.key, {"manifest": mkey, "writer": self.token,
                                                                   "generation": self._gen, "page": e.key})
            except DurableStoreError as qe:
                where = f"could not be quarantined ({qe})"
            raise CorruptChunkError(f"{e} twice; {where}", key=e.key, manifest=mkey) from None

    def _load(self, m: dict, mkey: str) -> tuple[dict[str, bytes], dict]:
        pk = m["pack"]
        pack, part = read_pack(self._durable, m, mkey)
        entries = pk["entries"]
        self._reset_state()
        self._t, self._lo, self._k_lo, self._k_hi = m["t"], m["lo"], m["k_lo"], m["k_hi"]
        self._k_durable = self._k_hi
        self._shards = decode_tables(m)
        self._heads, self._open_k, self._pages = decode_heads(m), m["k_hi"], list(m.get("pages", []))
        self._seed, self._draws = m["sampler"]["seed"], m["sampler"]["draws"]
        self._restored_from, self._last_commit = mkey, m["commit"]
        n = self._t - self._k_hi * self.cfg.chunk
        opened = self._heads.get(self._k_hi, {})
        segs = [g for head in opened.values() for g in head]
        got, bad = read_segments(self._durable, [g for g in segs if g.pack != pk["key"]])
        if bad is not None:
            raise CorruptChunkError(f"pack {self._durable.url}/{bad}, holding the start of the tails of manifest "
                                    f"{mkey}, is missing or failed its checksum", key=bad, manifest=mkey)
        got.update({g: pack[g.off:g.off + sum(g.nbytes)] for g in segs if g.pack == pk["key"]})
        for w in range(self.num_streams if n else 0):
            heads = head_fields(opened.get(w, ()), got, len(self.fields))
            for j, f in enumerate(self.fields):
                rest = part(f"tail/{w}/{f}") if f"tail/{w}/{f}" in entries else b""
                self.codec.decode_tail(heads[j] + rest, self._tail[f][w, :n])
        return commit_blobs(m, part), m["extra"]

    def _sweep_durable(self, ms: list, parsed: dict[str, dict], listing: dict[str, int]) -> None:
        """Delete chunks and packs no manifest references (a crashed or fenced writer's unfinished commit)."""
        if len(parsed) != len(ms):
            return
        live = set().union(*(object_keys(m) for m in parsed.values()))
        live |= {m["pack"]["key"] for m in parsed.values()}
        packs = self._durable.list_sizes(PACK_DIR)
        stray = self._durable.stray_manifest_files()
        self._durable.delete(sorted(k for k in {*listing, *packs, *self._durable.list_sizes(PAGE_DIR)}
                                    if k not in live) + stray)

    def _fetch_chunk(self, w: int, k: int, info: ShardInfo) -> list[bytes]:
        """Durable shard (w, k) as verified per-field shard files: its chunk object, after the frames of its
        segments where it has some.

        An object that fails its checksum twice (the second read tells a torn transfer from damage at rest) is
        moved to quarantine/, so that the next restore() falls back past every manifest that references it, and
        the replay becomes unusable: its commits would reference the same object. CorruptChunkError names both.
        """
        d, mkey = self._durable, self._restored_from
        head = self._heads.get(k, {}).get(w, ())
        m = head_m(head)
        key = chunk_key(w, k, int(info.obj[w]), m)
        with self._lock:
            known = next((self._corrupt[x] for x in [key, *(g.pack for g in head)] if x in self._corrupt), None)
        if known is not None:
            raise CorruptChunkError(str(known), key=known.key, manifest=known.manifest)
        where = {key: f"durable chunk {d.url}/{key} referenced by manifest {mkey}"}
        where.update({g.pack: f"pack {d.url}/{g.pack}, holding inner chunks of shard {k} of stream {w} for "
                              f"manifest {mkey}," for g in head})
        bad = key
        for _ in range(2):
            try:
                data = d.get(key)
                got, bad = read_segments(d, list(head))
            except DurableStoreError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
                # gone since restore() listed it (quarantined by another copy of the job, or deleted)
                raise self._mark_corrupt(CorruptChunkError(
                    f"{where[key]} is missing (quarantined or deleted after this restore)", key=key, manifest=mkey),
                    k) from e
            if bad is not None and not d.exists(bad):
                raise self._mark_corrupt(CorruptChunkError(
                    f"{where[bad]} is missing (quarantined or deleted after this restore)", key=bad, manifest=mkey),
                    k)
            if bad is not None:
                continue
            bad, parts = key, join_shard(self.codec, data, info.size[w], head, got, where[key])
            if parts is not None and all(checksum(p) == int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                return parts
        record = {"manifest": mkey, "writer": self.token, "generation": self._gen, "stream": w, "shard": k}
        if bad == key:
            record.update(nbytes=len(data), expected_nbytes=int(info.size[w].sum()) - sum(
                head_file_bytes(head, j) for j in range(len(self.fields))))
        try:
            moved = f"moved to {d.url}/{d.quarantine(bad, record)}; the next restore falls back to the newest " \
                    "commit without it"
        except DurableStoreError as e:
            moved = f"and could not be quarantined ({e}): the next restore will fetch it again"
        raise self._mark_corrupt(CorruptChunkError(f"{where[bad]} failed its checksum twice; {moved}", key=bad,
                                                   manifest=mkey), k)

    def _mark_corrupt(self, err: CorruptChunkError, k: int) -> CorruptChunkError:
        with self._lock:
            self._corrupt[err.key] = err
            self._bad_keys |= {err.key}
            if k >= self._k_lo and self._bg_error is None:
                self._bg_error = err
        return err

    def _lazy_fetch(self) -> None:
        """Background half of a lazy restore: fetch every shard not yet on scratch, newest first. Any failure
        reaches the caller at its next add, sample or commit (a shard evicted meanwhile is no longer needed)."""
        k = self._k_hi
        try:
            for k in range(self._k_hi - 1, self._k_lo - 1, -1):
                for w in range(self.num_streams):
                    if self._closing.is_set():
                        return
                    if k < self._k_lo:
                        break
                    self._ensure_local(w, k)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, never swallowed
            if not self._closing.is_set() and (k >= self._k_lo or not isinstance(e, ReplayError)):
                with self._lock:
                    self._bg_error = self._bg_error or e
            return
        self._pinned = frozenset()  # every inherited chunk verified or evicted: GC may drop the fallbacks
