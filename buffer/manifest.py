"""Manifest: the JSON document that is a commit. Built from a state snapshot, parsed back on restore."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .codec import ShardCodec, checksum
from .config import Schema, schema_to_json
from .durable import Durable, chunk_key, page_key
from .errors import CorruptChunkError, DurableStoreError, SchemaError
from .records import PageRef

FORMAT = "r2i-replay/3"
# The same layout with frames in another codec than zstd. Code from before `replay.codec` reads any /3 store as
# zstd and would take its chunks for corrupt ones; this name makes such code refuse the store with a format error.
FORMAT_OF_CODEC = {"zstd": FORMAT, "lz4": "r2i-replay/3-lz4"}
# /2 has no pages: every row inline; /1 has no heads either: every chunk object is a whole shard
READABLE = (FORMAT, FORMAT_OF_CODEC["lz4"], "r2i-replay/2", "r2i-replay/1")
PAGE_FORMAT = "r2i-replay-page/1"


@dataclass
class ShardInfo:
    """Checksums of finished shard k: per stream and field (sorted field order), plus the durable object."""

    size: np.ndarray  # (W, F) u32 bytes of each field's shard file
    crc: np.ndarray  # (W, F) u32 checksum of each field's shard file
    obj: np.ndarray  # (W,) u32 id of the durable object: checksum of its per-file checksums


class Segment(NamedTuple):
    """`m` consecutive inner chunks of one stream's shard, durable as zstd frames (without their crc32c) in a
    commit's pack: every field's frames back to back from `off`, field j taking nbytes[j] bytes.

    A commit writes the frames of the open shard's full inner chunks that no earlier commit wrote, as one
    segment; the shard's chunk object, once the shard is finished, holds only what its segments do not."""

    pack: str
    pack_nbytes: int
    m: int
    off: int
    nbytes: tuple[int, ...]
    crc: int  # checksum() of all fields' frames together

    def field(self, buf: bytes, j: int) -> bytes:
        """Field j's frames out of this segment's bytes `buf`."""
        a = sum(self.nbytes[:j])
        return buf[a:a + self.nbytes[j]]


Head = tuple[Segment, ...]  # a shard's segments in order; together its first head_m() inner chunks


def head_m(head: Head) -> int:
    return sum(s.m for s in head)


def head_file_bytes(head: Head, j: int) -> int:
    """Bytes a head stands for in field j's shard file (each inner chunk there carries a crc32c)."""
    return sum(s.nbytes[j] + 4 * s.m for s in head)


def object_ids(crc: np.ndarray) -> np.ndarray:
    """(W, F) per-file crc32c -> (W,) id of each stream's durable object (checksum of the checksums)."""
    return np.array([checksum(np.ascontiguousarray(c, "<u4").tobytes()) for c in crc], np.uint32)


def split_object(data: bytes, sizes: np.ndarray) -> list[bytes] | None:
    """A durable object back into its per-field shard files; None when the length is wrong."""
    if len(data) != int(sizes.sum()):
        return None
    ends = np.cumsum(sizes.astype(np.int64)).tolist()
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<u4").tobytes()).decode()


def _unb64(s: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<u4").reshape(shape).astype(np.uint32)


def _u32s(s: object, n: int, what: str) -> tuple[np.ndarray | None, str | None]:
    """(n uint32 from base64 text `s`, None) or (None, what is wrong)."""
    if not isinstance(s, str):
        return None, f"{what} is not text"
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError as e:
        return None, f"{what} is not base64 ({e})"
    if len(raw) != 4 * n:
        return None, f"{what} holds {len(raw)} bytes, expected {4 * n}"
    return np.frombuffer(raw, "<u4"), None


def rows_problem(doc: dict, lo: int, hi: int, last: int, num_streams: int, nfields: int,
                 n_inner: int) -> str | None:
    """What is wrong with the rows a manifest or a page holds (tables of shards [lo, hi), segments of shards
    [lo, last]: a manifest's include its open shard), or None: lengths, object ids against the checksums they are
    made of, segment positions inside their packs. Checked before any row is trusted."""
    t, n, w, f = doc.get("tables"), hi - lo, num_streams, nfields
    if not isinstance(t, dict) or n < 0:
        return f"tables {type(t).__name__} for shards [{lo}, {hi})"
    got = {}
    for name, count in (("size", n * w * f), ("crc", n * w * f), ("obj", n * w)):
        got[name], err = _u32s(t.get(name), count, f"tables.{name}") if count else (np.zeros(0, "<u4"), None)
        if err:
            return err
    if n and not np.array_equal(object_ids(got["crc"].reshape(n * w, f)), got["obj"]):
        return "tables.obj does not match the checksums in tables.crc"
    h = doc.get("heads")
    if h is None:
        return None
    packs = h.get("packs") if isinstance(h, dict) else None
    if not isinstance(packs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) for p in packs):
        return "heads.packs is not a list of [key, nbytes]"
    if not h.get("rows"):
        return None
    width = 6 + f
    try:
        raw = base64.b64decode(h["rows"], validate=True) if isinstance(h["rows"], str) else b"?"
    except ValueError:
        raw = b"?"
    if len(raw) % (4 * width):
        return f"heads.rows is not base64 rows of {width} numbers"
    for k, ws, m, i, off, _crc, *nbytes in np.frombuffer(raw, "<u4").reshape(-1, width).tolist():
        if not (lo <= k <= last and ws < w and 1 <= m <= n_inner and i < len(packs)
                and off + sum(nbytes) <= packs[i][1]):
            return f"heads row (shard {k}, stream {ws}, {m} inner chunks, pack {i} at {off}) is out of range"
    return None


def encode_tables(shards: dict[int, ShardInfo], k_lo: int, k_hi: int) -> dict:
    ks = range(k_lo, k_hi)
    if not ks:
        return {"size": "", "crc": "", "obj": ""}
    return {
        "size": _b64(np.stack([shards[k].size for k in ks])),
        "crc": _b64(np.stack([shards[k].crc for k in ks])),
        "obj": _b64(np.stack([shards[k].obj for k in ks])),
    }


def _nfields(m: dict) -> int:
    return len(m["schema"]) if "schema" in m else m["nfields"]


def decode_tables(m: dict) -> dict[int, ShardInfo]:
    """Rows of a manifest (after `load_pages`) or of one page: shard k -> its ShardInfo."""
    assert m.get("rows_lo", m["k_lo"]) == m["k_lo"], f"manifest {m.get('commit')}: rows start at " \
        f"{m.get('rows_lo')}, not k_lo={m['k_lo']}; pass it through load_pages() first"
    k_lo, k_hi, w, f = m["k_lo"], m["k_hi"], m["num_streams"], _nfields(m)
    n = k_hi - k_lo
    if n == 0:
        return {}
    t = m["tables"]
    size, crc, obj = _unb64(t["size"], (n, w, f)), _unb64(t["crc"], (n, w, f)), _unb64(t["obj"], (n, w))
    return {k_lo + i: ShardInfo(size[i], crc[i], obj[i]) for i in range(n)}


def read_segments(d: Durable, segs: list[Segment]) -> tuple[dict[Segment, bytes], str | None]:
    """(bytes of each segment that verifies, key of a pack where one does not or that is gone (None if all do)).
    One range read per pack covers its segments; a read that fails otherwise raises DurableStoreError."""
    out: dict[Segment, bytes] = {}
    by_pack: dict[str, list[Segment]] = {}
    for g in segs:
        by_pack.setdefault(g.pack, []).append(g)
    for pack, gs in by_pack.items():
        lo, hi = min(g.off for g in gs), max(g.off + sum(g.nbytes) for g in gs)
        try:
            buf = d.get_range(pack, lo, hi)
        except DurableStoreError as e:
            if not isinstance(e.__cause__, FileNotFoundError):
                raise
            return out, pack
        for g in gs:
            b = buf[g.off - lo:g.off - lo + sum(g.nbytes)]
            if len(b) != sum(g.nbytes) or checksum(b) != g.crc:
                return out, pack
            out[g] = b
    return out, None


def head_fields(head: Head, got: dict[Segment, bytes], nfields: int) -> list[bytes]:
    """Per field, the frames of a head's inner chunks in order, from its segments' bytes."""
    return [b"".join(g.field(got[g], j) for g in head) for j in range(nfields)]


def join_shard(codec: ShardCodec, data: bytes, sizes: np.ndarray, head: Head, got: dict[Segment, bytes],
               where: str) -> list[bytes] | None:
    """Per-field shard files from a chunk object (`sizes`: the whole files' sizes) and its segments' bytes (from
    read_segments); None when the object does not fit the sizes or the frames do not fit its index. The caller
    checks the files against the manifest's checksums."""
    rest = split_object(data, np.array([int(n) - head_file_bytes(head, j) for j, n in enumerate(sizes)]))
    if rest is None or not head:
        return rest
    try:
        return [codec.join_head(h, head_m(head), r, where)
                for h, r in zip(head_fields(head, got, len(rest)), rest, strict=True)]
    except CorruptChunkError:
        return None


def encode_heads(heads: dict[int, dict[int, Head]], k_lo: int, k_hi: int) -> dict:
    """Segments of the shards in [k_lo, k_hi]: the packs they are in, and one uint32 row per segment, in order
    (k, w, m, pack index, off, crc, nbytes per field). Shard k_hi is the open one: its segments are the durable
    start of the tail."""
    packs: dict[str, int] = {}
    rows = []
    for k in range(k_lo, k_hi + 1):
        for w, head in sorted(heads.get(k, {}).items()):
            for g in head:
                rows.append([k, w, g.m, packs.setdefault(g.pack, len(packs)), g.off, g.crc, *g.nbytes])
    sizes = {g.pack: g.pack_nbytes for hs in heads.values() for head in hs.values() for g in head}
    assert all(0 <= x < 2**32 for r in rows for x in r), "segment offsets beyond 4 GiB into a pack"
    return {"packs": [[p, sizes[p]] for p in packs],
            "rows": base64.b64encode(np.array(rows, "<u4").tobytes()).decode()}


def decode_heads(m: dict) -> dict[int, dict[int, Head]]:
    """shard k -> stream w -> its segments, for the shards of manifest `m` (the open one included) that have some."""
    h = m.get("heads")
    if not h or not h["rows"]:
        return {}
    rows = np.frombuffer(base64.b64decode(h["rows"]), "<u4").reshape(-1, 6 + _nfields(m)).tolist()
    out: dict[int, dict[int, Head]] = {}
    for k, w, n, i, off, crc, *nbytes in rows:
        pack, size = h["packs"][i]
        ws = out.setdefault(k, {})
        ws[w] = (*ws.get(w, ()), Segment(pack, size, n, off, tuple(nbytes), crc))
    return out


def _shards(m: dict) -> Iterator[tuple[int, int, ShardInfo, Head]]:
    """(k, stream, its ShardInfo, its segments) of every finished shard whose rows `m` (a manifest or a page)
    holds."""
    heads = decode_heads(m)
    for k, info in decode_tables(m).items():
        for w in range(m["num_streams"]):
            yield k, w, info, heads.get(k, {}).get(w, ())


def chunk_keys(m: dict) -> dict[str, int]:
    """{durable chunk key: size} of every chunk object the manifest references."""
    return {chunk_key(w, k, int(info.obj[w]), head_m(h)):
            int(info.size[w].sum()) - sum(head_file_bytes(h, j) for j in range(info.size.shape[1]))
            for k, w, info, h in _shards(m)}


def object_keys(m: dict) -> dict[str, int]:
    """{key: size} of every durable object the manifest's shards and tails need: chunk objects, the packs of
    their segments (the manifest's own pack is not listed unless a segment is in it) and its pages."""
    out = chunk_keys(m)
    for pack, nbytes in (m.get("heads") or {}).get("packs", []):
        out[pack] = nbytes
    for ref in map(PageRef.from_json, m.get("pages", [])):
        out[ref.key] = ref.nbytes
    return out


def shard_keys(doc: dict) -> dict[int, frozenset[str]]:
    """Shard k -> keys of the durable objects its rows need (its chunk objects, its segments' packs), for the
    rows a page or a manifest holds."""
    out: dict[int, set[str]] = {}
    for k, w, info, h in _shards(doc):
        out.setdefault(k, set()).update([chunk_key(w, k, int(info.obj[w]), head_m(h)), *(g.pack for g in h)])
    return {k: frozenset(ks) for k, ks in out.items()}


def inline_rows(m: dict) -> dict:
    """A paged manifest as the document of the rows it holds itself (those of shards rows_lo..k_hi)."""
    return m | {"k_lo": m["rows_lo"]}


# --- pages: the rows of finished shards, written once, so that a manifest does not grow with the buffer
def encode_page(shards: dict[int, ShardInfo], heads: dict[int, dict[int, Head]], k0: int, k1: int,
                num_streams: int, nfields: int) -> tuple[dict, bytes, PageRef]:
    """(document, body, reference) of the page of shards [k0, k1), all finished: their tables and segments. A
    manifest lists the reference instead of the rows."""
    doc = {"format": PAGE_FORMAT, "k_lo": k0, "k_hi": k1, "num_streams": num_streams, "nfields": nfields,
           "tables": encode_tables(shards, k0, k1), "heads": encode_heads(heads, k0, k1 - 1)}
    body = json.dumps(doc, separators=(",", ":")).encode()
    crc = checksum(body)
    return doc, body, PageRef(page_key(k0, crc), len(body), crc, k0, k1)


def plan_pages(pages: tuple[PageRef, ...], k_lo: int, k_hi: int, size: int
               ) -> tuple[list[PageRef], list[tuple[int, int]]]:
    """(the references still needed in window [k_lo, k_hi), the ranges [k0, k1) to write as new pages): every
    full stretch of `size` shards below k_hi that no page holds, pages ending on multiples of `size`."""
    kept = [p for p in pages if p.k1 > k_lo]
    a, new = max(kept[-1].k1 if kept else 0, k_lo), []
    while (a // size + 1) * size <= k_hi:
        new.append((a, (a // size + 1) * size))
        a = new[-1][1]
    return kept, new


def load_pages(d: Durable, m: dict, mkey: str, cache: dict[str, dict] | None = None) -> dict:
    """Manifest `m` with every row inline: its pages' rows joined to its own (m itself when it has no pages).
    A page that is missing or fails its checksum raises CorruptChunkError naming it and the manifest; a failed
    read that is not "missing" raises DurableStoreError. `cache`: pages already read (they never change)."""
    refs = [PageRef.from_json(p) for p in m.get("pages") or []]
    if not refs:
        return m
    shards, heads = decode_tables(inline_rows(m)), decode_heads(m)
    for key, nbytes, crc, k0, k1 in ((p.key, p.nbytes, p.crc, p.k0, p.k1) for p in refs):
        doc = (cache or {}).get(key)
        if doc is None:
            try:
                body = d.get(key)
            except DurableStoreError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise
                raise CorruptChunkError(f"page {d.url}/{key} of manifest {mkey} is missing", key=key,
                                        manifest=mkey, kind="page", problem="missing") from e
            if len(body) != nbytes or checksum(body) != crc:
                what = "truncated" if len(body) < nbytes else "checksum mismatch"
                raise CorruptChunkError(f"page {d.url}/{key} of manifest {mkey} failed its checksum ({what}: "
                                        f"{len(body)} of {nbytes} bytes)", key=key, manifest=mkey, kind="page",
                                        problem=what)
            doc = json.loads(body)
            if cache is not None:
                cache[key] = doc
            problem = page_problem(doc, k0, k1, m)
            if problem:  # the checksum matched: a writer's fault, or a manifest of before manifests had theirs
                raise CorruptChunkError(f"page {d.url}/{key} of manifest {mkey} is invalid: {problem}", key=key,
                                        manifest=mkey, kind="page", problem="invalid")
        shards.update(decode_tables(doc))
        for k, ws in decode_heads(doc).items():
            heads.setdefault(k, {}).update(ws)
    k_lo, k_hi = m["k_lo"], m["k_hi"]
    shards = {k: v for k, v in shards.items() if k_lo <= k < k_hi}
    assert len(shards) == k_hi - k_lo, f"manifest {mkey}: rows of {k_hi - k_lo - len(shards)} shards missing"
    return m | {"rows_lo": k_lo, "tables": encode_tables(shards, k_lo, k_hi),
                "heads": encode_heads(heads, k_lo, k_hi)}


def page_problem(doc: object, k0: int, k1: int, m: dict) -> str | None:
    """What is wrong with page document `doc`, listed by manifest `m` for shards [k0, k1), or None."""
    if not isinstance(doc, dict) or doc.get("format") != PAGE_FORMAT:
        return f"not a {PAGE_FORMAT} document"
    ours = (k0, k1, m["num_streams"], _nfields(m))
    if (doc.get("k_lo"), doc.get("k_hi"), doc.get("num_streams"), doc.get("nfields")) != ours:
        return f"k_lo, k_hi, num_streams, nfields {[doc.get(x) for x in ('k_lo', 'k_hi', 'num_streams', 'nfields')]}" \
               f", listed as {list(ours)}"
    return rows_problem(doc, k0, k1, k1 - 1, m["num_streams"], _nfields(m), m["chunk"] // m["inner"])


def check_compatible(m: dict, key: str, schema: Schema, num_streams: int, chunk: int, inner: int,
                     codec: str = "zstd") -> None:
    """SchemaError naming the first difference between a stored manifest and this buffer's layout."""
    if m.get("format") not in READABLE:
        raise SchemaError(f"manifest {key}: format {m.get('format')!r}, expected one of {list(READABLE)}")
    ours = schema_to_json(schema)
    if m["schema"] != ours:
        diff = sorted(set(m["schema"]).symmetric_difference(ours)) or [
            k for k in ours if m["schema"][k] != ours[k]]
        raise SchemaError(f"manifest {key}: stored schema differs from ours at {diff}: "
                          f"stored {[m['schema'].get(k) for k in diff]}, ours {[ours.get(k) for k in diff]}")
    for name, val in (("num_streams", num_streams), ("chunk", chunk), ("inner", inner), ("codec", codec)):
        if m.get(name, "zstd") != val:  # a manifest without "codec" predates it: zstd
            raise SchemaError(f"manifest {key}: stored {name}={m[name]}, this buffer uses {name}={val}")
