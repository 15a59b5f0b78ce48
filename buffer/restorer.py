"""Restore: the newest commit whose objects are all there and verify becomes the window; the tail comes back from
its pack, the shards onto scratch (at once, or in the background when lazy); objects no commit references are
swept."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from .chunks import Chunks
from .codec import checksum
from .durable import CHUNK_DIR, PACK_DIR, PAGE_DIR, Durable
from .errors import CorruptChunkError, DurableStoreError, NoRestorableCommitError, ReplayError
from .integrity import read_manifest
from .manifest import check_compatible, decode_heads, decode_tables, head_fields, load_pages, object_keys, read_segments
from .records import Manifest, PackRef, PageRef
from .state import Context, Health, Window
from .tail import Tail

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    commit_id: int
    extra: dict
    blobs: dict[str, bytes]


def read_pack(d: Durable, pk: PackRef, mkey: str) -> tuple[bytes, Callable[[str], bytes]]:
    """The pack of manifest `mkey`, verified, and a reader of its named parts (`blob/<name>`, `tail/<w>/<field>`).
    A lost or damaged pack is a bad commit like a corrupt chunk: CorruptChunkError, so a restore falls back."""
    try:
        pack = d.get(pk.key)
    except DurableStoreError as e:
        raise CorruptChunkError(f"pack {d.url}/{pk.key} of manifest {mkey} is missing or unreadable: {e}",
                                key=pk.key, manifest=mkey, kind="pack", problem="missing") from e
    if len(pack) != pk.nbytes or checksum(pack) != pk.crc:
        what = "truncated" if len(pack) < pk.nbytes else "checksum mismatch"
        raise CorruptChunkError(f"pack {d.url}/{pk.key} of manifest {mkey} failed its checksum ({what}: "
                                f"{len(pack)} of {pk.nbytes} bytes)", key=pk.key, manifest=mkey, kind="pack",
                                problem=what)
    return pack, pk.reader(pack, mkey)


def commit_blobs(names: list[str] | tuple[str, ...], part: Callable[[str], bytes]) -> dict[str, bytes]:
    """The caller's blobs of a commit, by name."""
    return {name: part(f"blob/{name}") for name in names}


class Restorer:
    def __init__(self, ctx: Context, win: Window, health: Health, tail: Tail, chunks: Chunks,
                 page_cache: dict[str, dict]):
        self.ctx, self.win, self.health, self.tail, self.chunks = ctx, win, health, tail, chunks
        self.page_cache = page_cache
        self.skipped: list[CorruptChunkError] = []  # what the last restore() passed over, newest first

    def restore(self) -> Restored | None:
        """Bring the buffer to the newest durable commit whose chunks verify; None on a fresh store."""
        ctx, win, health, d = self.ctx, self.win, self.health, self.ctx.durable
        if win.t or win.draws:
            raise ReplayError("restore() must be called before any add() or sample()")
        ms = d.manifests()
        if not ms:
            ctx.scratch.sweep(range(0))
            return None
        listing = {**d.list_sizes(CHUNK_DIR), **d.list_sizes(PACK_DIR), **d.list_sizes(PAGE_DIR)}
        bad: set[str] = set()
        damaged: list[str] = []  # manifests that fail their own checks
        first_err: CorruptChunkError | None = None
        parsed: dict[str, dict] = {}
        self.skipped = []
        cfg = ctx.cfg
        for _c, _g, mkey in ms:
            try:
                m = read_manifest(d, mkey)
            except CorruptChunkError as e:  # damaged, or gone since listed: an older commit may still restore
                self._skip(e)
                damaged.append(mkey)
                continue
            check_compatible(m, mkey, ctx.schema, ctx.num_streams, cfg.chunk, cfg.inner, cfg.codec)
            if {PageRef.from_json(p).key for p in m.get("pages", [])} & (bad | health.corrupt.keys()):
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
            if keys.keys() & (bad | health.corrupt.keys()):
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
                rec = Manifest.from_json(m)
                blobs = self._load(rec, m, mkey)
                if not cfg.lazy:
                    # every fetch ends before the next manifest is tried: none may write scratch or flag an
                    # error for this one after that
                    self.chunks.fetch_all()
            except CorruptChunkError as e:
                bad.add(e.key)
                first_err = first_err or e
                self._skip(e)
                win.reset()
                health.bg_error = None  # a fetch that found it during a full restore: this manifest is skipped
                continue
            win.manifest_keys[mkey] = frozenset(keys)
            health.bad_keys = bad | set(health.corrupt)
            self._sweep_durable(ms, parsed, listing)
            ctx.scratch.sweep(range(win.k_lo, win.k_hi))
            if cfg.lazy:
                self.chunks.start_lazy(frozenset(k for _, _, k in ms))
            return Restored(rec.commit, rec.extra, blobs)
        unusable = sorted(bad | set(health.corrupt)) + damaged
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

    def _load_pages(self, m: dict, mkey: str) -> dict:
        """load_pages() for restore: a page that fails its checksum is read again (a torn transfer passes then)
        and, failing twice, moved to quarantine/ like a chunk. CorruptChunkError names it either way."""
        d = self.ctx.durable
        try:
            return load_pages(d, m, mkey, self.page_cache)
        except CorruptChunkError as e:
            if not d.exists(e.key):
                raise
            first = e
        try:
            return load_pages(d, m, mkey, self.page_cache)
        except CorruptChunkError as e:
            if e.key != first.key:
                raise
            try:
                where = f"moved to {d.url}/" + d.quarantine(e.key, {"manifest": mkey, "writer": self.ctx.token,
                                                                   "generation": self.ctx.gen, "page": e.key})
            except DurableStoreError as qe:
                where = f"could not be quarantined ({qe})"
            raise CorruptChunkError(f"{e} twice; {where}", key=e.key, manifest=mkey) from None

    def _load(self, rec: Manifest, m: dict, mkey: str) -> dict[str, bytes]:
        """The window of manifest `mkey` (`rec`; `m`, its JSON with every row inline), its tail decoded into RAM;
        returns its blobs."""
        ctx, win, d = self.ctx, self.win, self.ctx.durable
        pack, part = read_pack(d, rec.pack, mkey)
        win.reset()
        win.t, win.lo, win.k_lo, win.k_hi = rec.t, rec.lo, rec.k_lo, rec.k_hi
        win.k_durable = win.k_hi
        win.shards = decode_tables(m)
        win.heads, win.open_k, win.pages = decode_heads(m), rec.k_hi, rec.pages or ()
        win.seed, win.draws = rec.sampler.seed, rec.sampler.draws
        win.restored_from, win.last_commit = mkey, rec.commit
        n = win.t - win.k_hi * ctx.cfg.chunk
        opened = win.heads.get(win.k_hi, {})
        segs = [g for head in opened.values() for g in head]
        got, bad = read_segments(d, [g for g in segs if g.pack != rec.pack.key])
        if bad is not None:
            raise CorruptChunkError(f"pack {d.url}/{bad}, holding the start of the tails of manifest "
                                    f"{mkey}, is missing or failed its checksum", key=bad, manifest=mkey)
        got.update({g: pack[g.off:g.off + sum(g.nbytes)] for g in segs if g.pack == rec.pack.key})
        for w in range(ctx.num_streams if n else 0):
            heads = head_fields(opened.get(w, ()), got, len(ctx.fields))
            for j, f in enumerate(ctx.fields):
                name = f"tail/{w}/{f}"
                rest = part(name) if name in rec.pack.entries else b""
                ctx.codec.decode_tail(heads[j] + rest, self.tail.arrays[f][w, :n])
        return commit_blobs(rec.blobs, part)

    def _sweep_durable(self, ms: list, parsed: dict[str, dict], listing: dict[str, int]) -> None:
        """Delete chunks and packs no manifest references (a crashed or fenced writer's unfinished commit)."""
        if len(parsed) != len(ms):
            return
        d = self.ctx.durable
        live = set().union(*(object_keys(m) for m in parsed.values()))
        live |= {m["pack"]["key"] for m in parsed.values()}
        packs = d.list_sizes(PACK_DIR)
        stray = d.stray_manifest_files()
        d.delete(sorted(k for k in {*listing, *packs, *d.list_sizes(PAGE_DIR)} if k not in live) + stray)
