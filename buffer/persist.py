"""Commit and restore internals of `Replay` (a mixin: same object, kept apart to keep files short)."""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import numpy as np

from .codec import checksum
from .config import schema_to_json
from .durable import PACK_DIR, chunk_key, manifest_key, pack_key
from .errors import CorruptChunkError, DurableStoreError, ReplayError, WriterFencedError
from .manifest import FORMAT, ShardInfo, chunk_keys, decode_tables, encode_tables, split_object


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


class Persistence:
    """Durable-side methods of Replay; every attribute used here is set by Replay.__init__."""

    def _do_commit(self, s: _Snapshot) -> None:
        t0, d, W = time.perf_counter(), self._durable, self.num_streams
        d.check_writer(self.token, self._gen)

        def upload(w: int, k: int) -> tuple[str, int]:
            info = s.shards[k]
            parts = [self._scratch.read(f, w, k) for f in self.fields]
            if any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                raise CorruptChunkError(f"scratch shard {k} of stream {w} changed since it was written; "
                                        "nothing was published", key=f"scratch:{w}/{k}", manifest="(commit)")
            key = chunk_key(w, k, int(info.obj[w]))
            d.put(key, parts, fsync=False)  # flushed together below, before the manifest
            return key, sum(map(len, parts))

        tails = [(w, f) for w in range(W) for f in self.fields if s.tails[f].shape[1]]
        # This thread starts uploading at once and pool workers join as they come free: submitted to the pool
        # alone, the uploads queued behind add()'s pending inner-chunk encodes.
        uploads: list[tuple[str, int]] = []
        self._parallel(lambda wk: uploads.append(upload(*wk)), [(w, k) for k in s.new for w in range(W)],
                       lambda: None)
        encoded = [self._tail_bytes(s, w, f) for w, f in tails]
        entries, parts, off = {}, [], 0
        for (w, f), enc in zip(tails, encoded, strict=True):
            parts.append(enc)
            entries[f"tail/{w}/{f}"] = [off, len(parts[-1]), checksum(parts[-1])]
            off += len(parts[-1])
        for name, b in sorted(s.blobs.items()):
            parts.append(b)
            entries[f"blob/{name}"] = [off, len(b), checksum(b)]
            off += len(b)
        pack = b"".join(parts)
        pkey = pack_key(s.commit, self._gen)
        d.put(pkey, pack, fsync=False)
        d.sync([k for k, _ in uploads] + [pkey])
        manifest = {
            "format": FORMAT, "commit": s.commit, "generation": self._gen, "writer": self.token,
            "time": time.time(), "schema": schema_to_json(self.schema), "num_streams": W,
            "chunk": self.cfg.chunk, "inner": self.cfg.inner, "zstd_level": self.cfg.zstd_level,
            "capacity": self.cfg.capacity, "t": s.t, "lo": s.lo, "k_lo": s.k_lo, "k_hi": s.k_hi,
            "tables": encode_tables(s.shards, s.k_lo, s.k_hi),
            "pack": {"key": pkey, "nbytes": len(pack), "crc": checksum(pack), "entries": entries},
            "sampler": {"seed": self._seed, "draws": s.draws, "batch": self.batch, "length": self.length,
                        "force_first": self.force_first},
            "blobs": sorted(s.blobs), "extra": s.extra,
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
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
        self._manifest_keys[mkey] = frozenset(chunk_keys(manifest))
        self._bad_keys -= {k for k, _ in uploads}  # a quarantined key written afresh from verified scratch
        new_bytes = sum(n for _, n in uploads)
        self.stats.update(last_commit_s=time.perf_counter() - t0, last_commit_chunk_bytes=new_bytes,
                          last_commit_bytes=new_bytes + len(pack) + len(body),
                          last_commit_pack_bytes=len(pack),
                          last_commit_manifest_bytes=len(body))
        try:
            d.check_writer(self.token, self._gen)
        except WriterFencedError as e:
            raise WriterFencedError(f"commit {s.commit} was published as {mkey}, but {e}; no garbage collected"
                                    ) from e
        self._gc()

    def _tail_bytes(self, s: _Snapshot, w: int, f: str) -> bytes:
        """Pack entry of one stream's tail: the zstd frames add() already made for its full inner chunks
        (without their crc32c; the pack has its own checksum), then one frame for the rest. Re-encoding the
        whole tail at every commit was most of a commit's CPU and of an empty commit's time; decode_tail
        reads concatenated frames as one."""
        jobs = (s.tail_inner or {}).get(w, [])
        fi, a = self.fields.index(f), len(jobs) * self.codec.inner
        parts = [job.result()[fi][:-4] for job in jobs]
        if s.tails[f].shape[1] > a:
            parts.append(self.codec.encode_tail(s.tails[f][w, a:]))
        return b"".join(parts)

    def _keys_of(self, mkey: str) -> frozenset[str]:
        if mkey not in self._manifest_keys:
            self._manifest_keys[mkey] = frozenset(chunk_keys(self._durable.read_json(mkey)))
        return self._manifest_keys[mkey]

    def _keys_or_none(self, mkey: str) -> frozenset[str] | None:
        try:
            return self._keys_of(mkey)
        except (DurableStoreError, ValueError, KeyError):
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
            except (DurableStoreError, ValueError, KeyError):
                keys = frozenset()
            self._durable.delete([mkey])
            self._durable.delete([pack_key(c, g)] + sorted(keys - live))
            self._manifest_keys.pop(mkey, None)

    def _load(self, m: dict, mkey: str) -> tuple[dict[str, bytes], dict]:
        pk = m["pack"]
        try:
            pack = self._durable.get(pk["key"])
        except DurableStoreError as e:  # a lost pack is a bad commit like a corrupt chunk: fall back past it
            raise CorruptChunkError(f"pack {self._durable.url}/{pk['key']} of manifest {mkey} is missing or "
                                    f"unreadable: {e}", key=pk["key"], manifest=mkey) from e
        if len(pack) != pk["nbytes"] or checksum(pack) != pk["crc"]:
            raise CorruptChunkError(f"pack {self._durable.url}/{pk['key']} of manifest {mkey} failed its "
                                    "checksum",
                                    key=pk["key"], manifest=mkey)
        entries = pk["entries"]

        def part(name: str) -> bytes:
            off, n, crc = entries[name]
            assert checksum(pack[off:off + n]) == crc, (name, mkey)  # the pack checksum already covers it
            return pack[off:off + n]

        self._reset_state()
        self._t, self._lo, self._k_lo, self._k_hi = m["t"], m["lo"], m["k_lo"], m["k_hi"]
        self._k_durable = self._k_hi
        self._shards = decode_tables(m)
        self._seed, self._draws = m["sampler"]["seed"], m["sampler"]["draws"]
        self._restored_from, self._last_commit = mkey, m["commit"]
        n = self._t - self._k_hi * self.cfg.chunk
        for w in range(self.num_streams):
            for f in self.fields:
                if n:
                    self.codec.decode_tail(part(f"tail/{w}/{f}"), self._tail[f][w, :n])
        return {name: part(f"blob/{name}") for name in m["blobs"]}, m["extra"]

    def _sweep_durable(self, ms: list, parsed: dict[str, dict], listing: dict[str, int]) -> None:
        """Delete chunks and packs no manifest references (a crashed or fenced writer's unfinished commit)."""
        if len(parsed) != len(ms):
            return
        live = set().union(*(chunk_keys(m) for m in parsed.values()))
        live |= {m["pack"]["key"] for m in parsed.values()}
        packs = self._durable.list_sizes(PACK_DIR)
        stray = self._durable.stray_manifest_files()
        self._durable.delete(sorted(k for k in [*listing, *packs] if k not in live) + stray)

    def _fetch_chunk(self, w: int, k: int, info: ShardInfo) -> list[bytes]:
        """Durable shard (w, k) as verified per-field shard files.

        One that fails its checksum twice (the second read tells a torn transfer from damage at rest) is moved to
        quarantine/, so that the next restore() falls back past every manifest that references it, and the
        replay becomes unusable: its commits would reference the same chunk. CorruptChunkError names both.
        """
        d, mkey = self._durable, self._restored_from
        key = chunk_key(w, k, int(info.obj[w]))
        with self._lock:
            known = self._corrupt.get(key)
        if known is not None:
            raise CorruptChunkError(str(known), key=key, manifest=known.manifest)
        where = f"durable chunk {d.url}/{key} referenced by manifest {mkey}"
        for _ in range(2):
            try:
                data = d.get(key)
            except DurableStoreError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
                # gone since restore() listed it (quarantined by another copy of the job, or deleted)
                raise self._mark_corrupt(CorruptChunkError(
                    f"{where} is missing (quarantined or deleted after this restore)", key=key, manifest=mkey),
                    k) from e
            parts = split_object(data, info.size[w])
            if parts is not None and all(checksum(p) == int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                return parts
        record = {"manifest": mkey, "writer": self.token, "generation": self._gen, "stream": w, "shard": k,
                  "nbytes": len(data), "expected_nbytes": int(info.size[w].sum())}
        try:
            moved = f"moved to {d.url}/{d.quarantine(key, record)}; the next restore falls back to the newest " \
                    "commit without it"
        except DurableStoreError as e:
            moved = f"and could not be quarantined ({e}): the next restore will fetch it again"
        raise self._mark_corrupt(CorruptChunkError(f"{where} failed its checksum twice; {moved}", key=key,
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
