"""Commit and restore internals of `Replay` (a mixin: same object, kept apart to keep files short)."""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import numpy as np

from .codec import checksum
from .config import schema_to_json
from .durable import PACK_DIR, chunk_key, manifest_key, pack_key
from .errors import CorruptChunkError, DurableStoreError, ReplayError
from .manifest import FORMAT, ShardInfo, chunk_keys, decode_tables, encode_tables


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
        d.check_writer(self.token, self._gen)
        d.put(mkey, body)
        d.sync_dirs([mkey])
        self._k_durable = max(self._k_durable, s.k_hi)
        self._last_commit = s.commit
        self._manifest_keys[mkey] = frozenset(chunk_keys(manifest))
        new_bytes = sum(n for _, n in uploads)
        self.stats.update(last_commit_s=time.perf_counter() - t0, last_commit_chunk_bytes=new_bytes,
                          last_commit_bytes=new_bytes + len(pack) + len(body),
                          last_commit_pack_bytes=len(pack),
                          last_commit_manifest_bytes=len(body))
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

    def _gc(self) -> None:
        """Drop manifests beyond the newest `keep`, then their packs and the chunks no kept one references."""
        ms = self._durable.manifests()
        kept, dropped = ms[:self.cfg.keep], ms[self.cfg.keep:]
        if not dropped:
            return
        live = frozenset().union(*(self._keys_of(k) for _, _, k in kept))
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

    def _lazy_fetch(self) -> None:
        """Background half of a lazy restore: fetch every shard not yet on scratch, newest first."""
        for k in range(self._k_hi - 1, self._k_lo - 1, -1):
            for w in range(self.num_streams):
                if self._closing.is_set() or k < self._k_lo:
                    return
                try:
                    self._ensure_local(w, k)
                except ReplayError as e:
                    if k >= self._k_lo and not self._closing.is_set():
                        self._bg_error = e
                    return
