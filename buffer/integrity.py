"""Integrity of the durable store: a manifest's own checksum and the checks of every field a restore trusts, and
`check_store`, which reads a whole store and names each damaged object (for `orchestrator.verify`).

What protects what: a manifest carries "crc", the checksum of its canonical JSON (sorted keys, no spaces), so a
change to any value is found and only re-indenting is harmless; its name must match the commit and generation it
holds (a copy under another name is a duplicate), and its fields are range-checked before use (what protects a
manifest written before manifests had checksums). The manifest then holds the size and checksum of everything
else: its pack (tails, segments, blobs, each entry with its own checksum too), each page (whose rows are checked
like the manifest's), and per chunk object the checksum of every field's shard file (and the object's id, the
checksum of those checksums, which is part of its key). writer.json carries a "crc" of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .codec import ShardCodec, checksum, json_checksum
from .config import CODECS
from .durable import WRITER_KEY, Durable, chunk_key, json_damage, pack_key, page_key
from .errors import CorruptChunkError, DurableStoreError
from .manifest import (
    READABLE,
    Head,
    Segment,
    decode_heads,
    decode_tables,
    head_file_bytes,
    head_m,
    inline_rows,
    join_shard,
    load_pages,
    read_segments,
    rows_problem,
)
from .records import PackRef

_REQUIRED = {"format", "commit", "generation", "writer", "time", "schema", "num_streams", "chunk", "inner",
             "zstd_level", "capacity", "t", "lo", "k_lo", "k_hi", "tables", "pack", "sampler", "blobs", "extra"}
# "heads" since r2i-replay/2, "pages" and "rows_lo" since /3, "codec" since lz4, "crc" since manifests checksum
_KNOWN = _REQUIRED | {"heads", "pages", "rows_lo", "codec", "crc"}


def seal(manifest: dict) -> bytes:
    """A manifest's bytes, its checksum last (code from before "crc" ignores the key)."""
    return json.dumps(manifest | {"crc": json_checksum(manifest)}, separators=(",", ":")).encode()


def _int(v: object, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _name(key: str) -> tuple[int, int] | None:
    stem = key.rsplit("/", 1)[-1].removesuffix(".json").split("-")
    return (int(stem[0]), int(stem[1])) if len(stem) == 2 and all(s.isdigit() for s in stem) else None


def manifest_problem(m: object, key: str) -> tuple[str, str] | None:
    """(problem, detail) of a parsed manifest, or None when every field a restore uses is in range. A format this
    code does not know passes when its checksum matches (check_compatible refuses it by name: a newer writer's,
    not damage)."""
    if not isinstance(m, dict):
        return "invalid", f"a JSON {type(m).__name__}, not an object"
    if "crc" in m and m["crc"] != json_checksum(m):
        return "checksum mismatch", f"crc {m['crc']!r}, content {json_checksum(m)}"
    if m.get("format") not in READABLE:  # a newer writer's, or (without "crc", which every newer one has) damage
        return None if "crc" in m else ("invalid", f"format {m.get('format')!r} without a checksum")
    if set(m) - _KNOWN or _REQUIRED - set(m):
        return "invalid", f"unknown fields {sorted(set(m) - _KNOWN)}, missing {sorted(_REQUIRED - set(m))}"
    ints = ("commit", 1), ("generation", 1), ("num_streams", 1), ("chunk", 1), ("inner", 1), ("capacity", 1), \
        ("t", 0), ("lo", 0), ("k_lo", 0), ("k_hi", 0), ("zstd_level", -(2**31))
    bad = [f for f, lo in ints if not _int(m[f], lo)]
    if bad:
        return "invalid", f"{bad} not integers in range"
    if (m["commit"], m["generation"]) != _name(key):
        return "duplicate", f"holds commit {m['commit']} of generation {m['generation']}, not the one its name says"
    chunk, t, lo, k_lo, k_hi = m["chunk"], m["t"], m["lo"], m["k_lo"], m["k_hi"]
    if chunk % m["inner"] or lo > t or k_hi != t // chunk or k_lo != lo // chunk:
        return "invalid", f"positions t={t}, lo={lo}, k_lo={k_lo}, k_hi={k_hi} with chunk {chunk}/{m['inner']}"
    s = m["schema"]
    if not isinstance(s, dict) or not s or not all(
            isinstance(v, dict) and isinstance(v.get("dtype"), str) and isinstance(v.get("shape"), list)
            for v in s.values()) or m.get("codec", "zstd") not in CODECS:
        return "invalid", "schema or codec"
    pages, rows_lo = m.get("pages", []), m.get("rows_lo", k_lo)
    if not isinstance(pages, list) or not all(isinstance(p, list) and len(p) == 5 and isinstance(p[0], str)
                                              and all(_int(x) for x in p[1:]) for p in pages):
        return "invalid", "pages are not [key, nbytes, crc, k0, k1]"
    chain = all(a[4] == b[3] for a, b in zip(pages, pages[1:], strict=False)) and all(
        p[0] == page_key(p[3], p[2]) and p[3] < p[4] for p in pages)
    if not _int(rows_lo) or not k_lo <= rows_lo <= k_hi or not chain or (
            pages[0][3] <= k_lo < pages[0][4] and pages[-1][4] == rows_lo if pages else rows_lo == k_lo) is False:
        return "invalid", f"pages {[p[3:] for p in pages]} and rows_lo={rows_lo} do not cover [{k_lo}, {k_hi})"
    problem = rows_problem(m, rows_lo, k_hi, k_hi, m["num_streams"], len(s), chunk // m["inner"])
    if problem:
        return "invalid", problem
    pk, sm = m["pack"], m["sampler"]
    if not isinstance(pk, dict) or pk.get("key") != pack_key(m["commit"], m["generation"]) \
            or not _int(pk.get("nbytes")) or not _int(pk.get("crc")) or not isinstance(pk.get("entries"), dict) \
            or not all(isinstance(e, list) and len(e) >= 3 and all(_int(x) for x in e)
                       and e[0] + e[1] <= pk["nbytes"] for e in pk["entries"].values()):
        return "invalid", "pack key, size or entries"
    if not isinstance(m["blobs"], list) or not all(isinstance(b, str) and f"blob/{b}" in pk["entries"]
                                                   for b in m["blobs"]):
        return "invalid", "blobs without their pack entries"
    if not isinstance(sm, dict) or not _int(sm.get("seed"), -(2**63)) or not _int(sm.get("draws")) \
            or not _int(sm.get("batch"), 1) or not _int(sm.get("length"), 1) \
            or not isinstance(sm.get("force_first"), bool) or not isinstance(m["extra"], dict):
        return "invalid", "sampler or extra"
    return None


def _damaged(url: str, key: str, problem: str, detail: str) -> CorruptChunkError:
    return CorruptChunkError(f"manifest {url}/{key} is damaged ({problem}): {detail}", key=key, manifest=key,
                             kind="manifest", problem=problem)


def parse_manifest(body: bytes, key: str, url: str) -> dict:
    """Manifest `key` from its bytes, checked (manifest_problem); CorruptChunkError naming it and what is wrong."""
    try:
        m = json.loads(body)
    except ValueError as e:
        raise _damaged(url, key, json_damage(body), str(e)) from None
    problem = manifest_problem(m, key)
    if problem:
        raise _damaged(url, key, *problem)
    return m


def read_manifest(d: Durable, key: str) -> dict:
    """Manifest `key` of store `d`, checked; CorruptChunkError when damaged or gone since it was listed, and
    DurableStoreError when the read fails otherwise."""
    try:
        body = d.get(key)
    except DurableStoreError as e:
        if not isinstance(e.__cause__, FileNotFoundError):
            raise
        raise _damaged(d.url, key, "missing", "deleted since it was listed") from e
    return parse_manifest(body, key, d.url)


def latest_manifest(d: Durable) -> tuple[dict | None, list[CorruptChunkError]]:
    """(the newest manifest that passes its checks with its key under "key", or None; the newer ones that fail)."""
    skipped = []
    for _c, _g, mkey in d.manifests():
        try:
            return read_manifest(d, mkey) | {"key": mkey}, skipped
        except CorruptChunkError as e:
            skipped.append(e)
    return None, skipped


@dataclass(frozen=True)
class Damage:
    """One damaged durable object: its key, kind (manifest, writer, page, pack, blob, chunk), what is wrong
    (checksum mismatch, truncated, unparsable, invalid, stale, duplicate, missing, size mismatch) and the
    manifests that need it."""

    key: str
    kind: str
    problem: str
    detail: str
    needed_by: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind, "problem": self.problem, "detail": self.detail,
                "needed_by": list(self.needed_by)}


def _size_problem(n: int, want: int) -> str:
    return "truncated" if n < want else "size mismatch" if n > want else "checksum mismatch"


class _Checker:
    def __init__(self, d: Durable):
        self.d, self.found, self.seen = d, {}, set()
        self.pages: dict[str, dict] = {}

    def add(self, key: str, kind: str, problem: str, detail: str, mkey: str = "") -> None:
        old = self.found.get(key)
        needed = (*(old.needed_by if old else ()), *([mkey] if mkey else []))
        self.found[key] = Damage(key, kind, problem, detail, tuple(dict.fromkeys(needed))) if not old else \
            Damage(old.key, old.kind, old.problem, old.detail, tuple(dict.fromkeys(needed)))

    def get(self, key: str, want: int, kind: str, mkey: str) -> bytes | None:
        try:
            data = self.d.get(key)
        except DurableStoreError as e:
            self.add(key, kind, "missing" if isinstance(e.__cause__, FileNotFoundError) else "unreadable",
                     str(e), mkey)
            return None
        if len(data) != want:
            self.add(key, kind, _size_problem(len(data), want), f"{len(data)} bytes, expected {want}", mkey)
            return None
        return data

    def pack(self, m: dict, mkey: str) -> None:
        pk = PackRef.from_json(m["pack"])
        if (pk.key, mkey) in self.seen:
            return
        self.seen.add((pk.key, mkey))
        data = self.get(pk.key, pk.nbytes, "pack", mkey)
        if data is None or checksum(data) == pk.crc:
            return
        parts = [n for n, e in sorted(pk.entries.items()) if checksum(data[e.off:e.off + e.nbytes]) != e.crc]
        kind = "blob" if parts and all(p.startswith("blob/") for p in parts) else "pack"
        self.add(pk.key, kind, "checksum mismatch", f"damaged parts: {parts or 'outside every entry'}", mkey)

    def segment(self, g: Segment, what: str, mkey: str) -> None:
        if (g.pack, g) in self.seen:
            if g.pack in self.found:
                self.add(g.pack, "pack", "", "", mkey)
            return
        self.seen.add((g.pack, g))
        try:
            _, bad = read_segments(self.d, [g])
        except DurableStoreError as e:
            self.add(g.pack, "pack", "unreadable", str(e), mkey)
            return
        if bad is not None:
            n = self.d.list_sizes(g.pack).get(g.pack)
            self.add(g.pack, "pack", "missing" if n is None else _size_problem(n, g.pack_nbytes),
                     f"the segment of {what} at byte {g.off} does not verify", mkey)

    def shard(self, codec: ShardCodec, w: int, k: int, info, head: Head, nf: int, mkey: str) -> None:
        key = chunk_key(w, k, int(info.obj[w]), head_m(head))
        for g in head:
            self.segment(g, f"shard {k} of stream {w}", mkey)
        if key in self.seen:
            if key in self.found:
                self.add(key, "chunk", "", "", mkey)
            return
        self.seen.add(key)
        want = int(info.size[w].sum()) - sum(head_file_bytes(head, j) for j in range(nf))
        data = self.get(key, want, "chunk", mkey)
        if data is None or any(g.pack in self.found for g in head):
            return
        got, _ = read_segments(self.d, list(head))
        parts = join_shard(codec, data, info.size[w], head, got, key)
        if parts is None or any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
            self.add(key, "chunk", "checksum mismatch", f"shard {k} of stream {w}", mkey)


def check_store(url: str) -> list[Damage]:
    """Read every object of durable store `url` that a restore of any of its commits would trust, and name each
    damaged one (read-only; never takes the writer token). [] for a healthy store."""
    d = Durable(url, create=False)
    c = _Checker(d)
    ms = d.manifests()
    try:
        w = d.read_writer()
    except CorruptChunkError as e:
        c.add(WRITER_KEY, "writer", e.problem, str(e))
    else:
        top = max((g for _, g, _ in ms), default=0)
        if w is None and ms:
            c.add(WRITER_KEY, "writer", "missing", f"{len(ms)} manifests but no writer token")
        elif w is not None and w["generation"] < top:
            c.add(WRITER_KEY, "writer", "stale", f"generation {w['generation']}, but a manifest of generation "
                                                 f"{top} was published (an older writer.json put back?)")
    for _c, _g, mkey in ms:
        try:
            m = read_manifest(d, mkey)
        except CorruptChunkError as e:
            c.add(mkey, "manifest", e.problem, str(e))
            continue
        if m.get("format") not in READABLE:
            c.add(mkey, "manifest", "unknown format", f"format {m['format']!r}, this code reads {list(READABLE)}")
            continue
        try:
            full = load_pages(d, m, mkey, c.pages)
        except CorruptChunkError as e:
            c.add(e.key, e.kind, e.problem, str(e), mkey)
            full = inline_rows(m)
        codec = ShardCodec(m["chunk"], m["inner"], m["zstd_level"], m.get("codec", "zstd"))
        heads, nf = decode_heads(full), len(m["schema"])
        for k, info in sorted(decode_tables(full).items()):
            for w in range(m["num_streams"]):
                c.shard(codec, w, k, info, heads.get(k, {}).get(w, ()), nf, mkey)
        for w, head in heads.get(m["k_hi"], {}).items():  # the open shard's segments start the tails
            for g in head:
                c.segment(g, f"the tail of stream {w}", mkey)
        c.pack(m, mkey)
    return sorted(c.found.values(), key=lambda x: x.key)
