"""Typed records of a commit's JSON: the manifest, its page references, its pack and the pack's entries.

Each record's to_json() is the exact JSON value the store holds (keys in the order written, lists where the store
has lists) and from_json() reads it back, so the records change no byte on disk: a manifest is
`seal(Manifest(...).to_json())`. The rows of a manifest or a page ("tables", "heads") stay in their compact
base64 encoding, read and written by the functions in manifest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .codec import checksum


@dataclass(frozen=True)
class PageRef:
    """A manifest's reference to the page holding the rows of finished shards [k0, k1).
    On disk: [key, nbytes, crc, k0, k1]."""

    key: str  # tables/<k0>-<crc>.json
    nbytes: int  # length of the page's body
    crc: int  # checksum() of the body
    k0: int
    k1: int

    def to_json(self) -> list:
        return [self.key, self.nbytes, self.crc, self.k0, self.k1]

    @classmethod
    def from_json(cls, v: list) -> PageRef:
        key, nbytes, crc, k0, k1 = v
        return cls(key, nbytes, crc, k0, k1)


@dataclass(frozen=True)
class PackEntry:
    """One named part of a commit's pack (`blob/<name>`, `tail/<w>/<field>`). On disk: [off, nbytes, crc]."""

    off: int  # byte offset in the pack
    nbytes: int
    crc: int  # checksum() of the part's bytes

    def to_json(self) -> list:
        return [self.off, self.nbytes, self.crc]

    @classmethod
    def from_json(cls, v: list) -> PackEntry:
        off, nbytes, crc = v[:3]  # the checker accepts longer entries: only the first three have a meaning
        return cls(off, nbytes, crc)


@dataclass(frozen=True)
class PackRef:
    """A commit's pack: one object holding its tails, the new segments of its open shard and its blobs.
    On disk: {"key", "nbytes", "crc", "entries": {name: [off, nbytes, crc]}}, entries in the order written."""

    key: str  # packs/<commit>-<generation>.pack
    nbytes: int
    crc: int  # checksum() of the whole pack
    entries: dict[str, PackEntry]

    def to_json(self) -> dict:
        return {"key": self.key, "nbytes": self.nbytes, "crc": self.crc,
                "entries": {name: e.to_json() for name, e in self.entries.items()}}

    @classmethod
    def from_json(cls, v: dict) -> PackRef:
        return cls(v["key"], v["nbytes"], v["crc"], {n: PackEntry.from_json(e) for n, e in v["entries"].items()})

    def reader(self, pack: bytes, where: str) -> Callable[[str], bytes]:
        """Reader of the named parts of this pack's bytes `pack` (verified as a whole by the caller)."""

        def part(name: str) -> bytes:
            e = self.entries[name]
            body = pack[e.off:e.off + e.nbytes]
            assert checksum(body) == e.crc, (name, where, e)  # the pack checksum already covers it
            return body

        return part


@dataclass(frozen=True)
class SamplerState:
    """Where the sampler stands at a commit: sample n is a pure function of (seed, n) and the window."""

    seed: int
    draws: int  # samples drawn so far
    batch: int
    length: int
    force_first: bool

    def to_json(self) -> dict:
        return {"seed": self.seed, "draws": self.draws, "batch": self.batch, "length": self.length,
                "force_first": self.force_first}

    @classmethod
    def from_json(cls, v: dict) -> SamplerState:
        return cls(v["seed"], v["draws"], v["batch"], v["length"], v["force_first"])


@dataclass(frozen=True)
class Manifest:
    """A commit. Fields None are absent from the JSON: manifests of older formats lack them ("heads" before
    r2i-replay/2, "pages" and "rows_lo" before /3, "codec" before lz4); this code writes every one. The "crc"
    that `integrity.seal` appends is not part of the record."""

    format: str
    commit: int
    generation: int
    writer: str  # the writer's token
    time: float  # wall clock at the commit
    schema: dict  # schema_to_json(): field -> {"shape": [...], "dtype": str}
    num_streams: int
    chunk: int
    inner: int
    codec: str | None
    zstd_level: int
    capacity: int
    t: int  # steps per stream
    lo: int  # FIFO window [lo, t)
    k_lo: int  # shards [k_lo, k_hi) finished and in the window
    k_hi: int
    pages: tuple[PageRef, ...] | None  # rows of shards [k_lo, rows_lo) and below, in pages
    rows_lo: int | None  # the manifest's own rows are those of shards [rows_lo, k_hi)
    tables: dict  # {"size", "crc", "obj"}: base64 uint32 (manifest.encode_tables)
    heads: dict | None  # {"packs": [[key, nbytes]], "rows": base64 uint32} (manifest.encode_heads)
    pack: PackRef
    sampler: SamplerState
    blobs: tuple[str, ...]  # names of the caller's blobs, sorted; each is pack entry blob/<name>
    extra: dict  # the caller's JSON

    def to_json(self) -> dict:
        out = {"format": self.format, "commit": self.commit, "generation": self.generation, "writer": self.writer,
               "time": self.time, "schema": self.schema, "num_streams": self.num_streams, "chunk": self.chunk,
               "inner": self.inner, "codec": self.codec, "zstd_level": self.zstd_level, "capacity": self.capacity,
               "t": self.t, "lo": self.lo, "k_lo": self.k_lo, "k_hi": self.k_hi,
               "pages": None if self.pages is None else [p.to_json() for p in self.pages],
               "rows_lo": self.rows_lo, "tables": self.tables, "heads": self.heads, "pack": self.pack.to_json(),
               "sampler": self.sampler.to_json(), "blobs": list(self.blobs), "extra": self.extra}
        return {k: v for k, v in out.items() if v is not None or k not in _OPTIONAL}

    @classmethod
    def from_json(cls, m: dict) -> Manifest:
        """The record of parsed manifest `m` (checked by integrity.manifest_problem first)."""
        pages = m.get("pages")
        return cls(m["format"], m["commit"], m["generation"], m["writer"], m["time"], m["schema"], m["num_streams"],
                   m["chunk"], m["inner"], m.get("codec"), m["zstd_level"], m["capacity"], m["t"], m["lo"],
                   m["k_lo"], m["k_hi"], None if pages is None else tuple(map(PageRef.from_json, pages)),
                   m.get("rows_lo"), m["tables"], m.get("heads"), PackRef.from_json(m["pack"]),
                   SamplerState.from_json(m["sampler"]), tuple(m["blobs"]), m["extra"])


_OPTIONAL = frozenset({"codec", "pages", "rows_lo", "heads"})
