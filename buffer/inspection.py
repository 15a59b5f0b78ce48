"""Read-only inspection of a durable store: its manifests, the chunk objects a manifest references, and a
fingerprint of the newest commit's contents (what "bit-identical to an uninterrupted run" compares).

Everything here reads through the functions a restore uses (manifest checks, pages, packs, the joining of chunk
objects with their segments), so a tool never reads the format differently from a restore. Nothing takes the
writer token or writes, moves or deletes anything: it is safe beside a running writer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .codec import ShardCodec, checksum
from .durable import Durable, chunk_key
from .errors import CorruptChunkError, DurableStoreError
from .integrity import latest_manifest, read_manifest
from .manifest import (
    Head,
    decode_heads,
    decode_tables,
    head_fields,
    head_file_bytes,
    head_m,
    join_shard,
    load_pages,
    read_segments,
)
from .records import PackRef
from .restorer import commit_blobs, read_pack


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class StoreFingerprint:
    """The newest commit that passes its checks, hashed: `blobs` (name -> sha256 of each caller blob), `replay`
    (sha256 over positions, sampler state, every finished shard's content and the tails), the caller's `extra`
    as committed, and `corrupt`: newer manifests that fail their checks, then the objects of this commit that are
    missing or fail their checksums (those are left out of the hashes, never hashed as if they were fine)."""

    commit: int
    manifest: str
    blobs: dict[str, str]
    replay: str
    extra: dict
    corrupt: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"commit": self.commit, "manifest": self.manifest, "blobs": dict(self.blobs), "replay": self.replay,
                "extra": self.extra, "corrupt": list(self.corrupt)}

    @classmethod
    def from_json(cls, d: dict) -> StoreFingerprint:
        try:
            return cls(int(d["commit"]), str(d["manifest"]), dict(d["blobs"]), str(d["replay"]), dict(d["extra"]),
                       tuple(d["corrupt"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"store fingerprint: {type(e).__name__} {e} in {sorted(d)}") from None


@dataclass(frozen=True)
class ChunkObject:
    """One durable chunk object a manifest references: finished shard `shard` of stream `stream`."""

    key: str
    stream: int
    shard: int
    nbytes: int


def probe_durable(url: str) -> None:
    """Open durable store `url` as a writer would (creating a local folder; on S3 the bucket, the credentials
    and a probe PUT); DurableStoreError naming the URL when that fails."""
    Durable(url)


def manifest_keys(url: str) -> list[str]:
    """Keys of every published manifest of store `url`, newest first (damaged ones included)."""
    return [k for _c, _g, k in Durable(url, create=False).manifests()]


def chunk_objects(url: str, manifest: str) -> list[ChunkObject]:
    """The chunk objects manifest `manifest` (a key from manifest_keys) references, its pages' rows included,
    by shard then stream. CorruptChunkError when the manifest or one of its pages is damaged or missing."""
    d = Durable(url, create=False)
    m = load_pages(d, read_manifest(d, manifest), manifest)
    heads, nf = decode_heads(m), len(m["schema"])
    out = []
    for k, info in sorted(decode_tables(m).items()):
        for w in range(m["num_streams"]):
            head = heads.get(k, {}).get(w, ())
            nbytes = int(info.size[w].sum()) - sum(head_file_bytes(head, j) for j in range(nf))
            out.append(ChunkObject(chunk_key(w, k, int(info.obj[w]), head_m(head)), w, k, nbytes))
    return out


def fingerprint_store(url: str) -> StoreFingerprint:
    """Fingerprint of the newest commit of store `url` that passes its checks, verifying every checksum on the
    way. DurableStoreError when no manifest passes them."""
    d = Durable(url, create=False)
    m, skipped = latest_manifest(d)
    if m is None:
        raise DurableStoreError(f"no readable manifest in {url}")
    mkey = m["key"]
    corrupt = [e.key for e in skipped]  # newer manifests that failed their own checks (a restore skips them too)
    h = hashlib.sha256(json.dumps({k: m[k] for k in ("t", "lo", "k_lo", "k_hi", "sampler", "schema")},
                                  sort_keys=True).encode())
    try:
        m = load_pages(d, m, mkey)
        tables, heads = decode_tables(m), decode_heads(m)
    except CorruptChunkError as e:  # the rows of finished shards are lost with their page: nothing to hash
        corrupt.append(e.key)
        tables, heads = {}, decode_heads(m)
    codec, nf = ShardCodec(m["chunk"], m["inner"], m["zstd_level"], m.get("codec", "zstd")), len(m["schema"])
    for k, info in sorted(tables.items()):
        for w in range(m["num_streams"]):
            head = heads.get(k, {}).get(w, ())
            key = chunk_key(w, k, int(info.obj[w]), head_m(head))
            parts, bad = _shard_files(d, codec, key, info.size[w], head)
            if parts is None or any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                corrupt.append(bad)
                continue
            # the shard's content, not its objects: which inner chunks sit in packs depends on when commits fell
            h.update(f"{w}/{k}".encode() + _sha(b"".join(parts)).encode())
    blobs: dict[str, str] = {}
    opened = heads.get(m["k_hi"], {})
    segs = [g for head in opened.values() for g in head]
    try:
        got, bad = read_segments(d, segs)
    except DurableStoreError:
        got, bad = {}, segs[0].pack
    if bad is not None:
        corrupt.append(bad)
    else:
        try:
            pk = PackRef.from_json(m["pack"])
            _pack, part = read_pack(d, pk, mkey)
        except CorruptChunkError as e:
            corrupt.append(e.key)
        else:
            blobs = {name: _sha(b) for name, b in sorted(commit_blobs(m["blobs"], part).items())}
            for w in range(m["num_streams"] if m["t"] > m["k_hi"] * m["chunk"] else 0):
                frames = head_fields(opened.get(w, ()), got, nf)
                for j, f in enumerate(sorted(m["schema"])):
                    name = f"tail/{w}/{f}"
                    h.update(name.encode() + _sha(frames[j] + (part(name) if name in pk.entries else b"")).encode())
    return StoreFingerprint(m["commit"], mkey, blobs, h.hexdigest(), m.get("extra", {}),
                            tuple(dict.fromkeys(corrupt)))


def _shard_files(d: Durable, codec: ShardCodec, key: str, sizes, head: Head) -> tuple[list[bytes] | None, str]:
    """(per-field shard files of one durable chunk object after its segments' frames, or None; the key at fault)"""
    try:
        data = d.get(key)
    except DurableStoreError:
        return None, key
    try:
        got, bad = read_segments(d, list(head))
    except DurableStoreError:
        return None, head[0].pack
    if bad is not None:
        return None, bad
    return join_shard(codec, data, sizes, head, got, key), key
