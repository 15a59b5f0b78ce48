"""Durable tier: objects, manifests and the writer token behind a folder, an fsspec URL or s3://bucket/prefix.

Layout under the root:
  writer.json                          current writer {token, generation, time, crc}; a newer writer fences older
                                       ones
  chunks/<stream>/<k>-<crc>.bin        finished shard k of one stream, all fields concatenated; written once
  chunks/<stream>/<k>-<crc>-h<m>.bin   the same without its first m inner chunks, which earlier commits' packs
                                       already hold (the manifest's `heads` say where)
  packs/<commit>-<gen>.pack            one commit's segments (the open shards' inner chunks finished since the
                                       last commit), the steps after them, and the caller's blobs
  tables/<k0>-<crc>.json               a page: the chunk tables and segment rows of finished shards [k0, k1),
                                       written once when the last of them is finished; manifests list pages
                                       instead of repeating those rows, so they do not grow with the buffer
  manifests/<commit>-<gen>.json        the commit, written last and write-once (tmp + link locally, a create-only
                                       PUT elsewhere)
  quarantine/<key>.<stamp>(.json)      a chunk or pack that failed its checksum when fetched, moved out of the
                                       way (kept, never deleted) with a JSON record of who found it where
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Callable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .codec import json_checksum
from .errors import CorruptChunkError, DurableStoreError, WriterFencedError
from .objstore import S3Objects

log = logging.getLogger(__name__)
MANIFEST_DIR, CHUNK_DIR, PACK_DIR, PAGE_DIR, QUARANTINE_DIR = "manifests", "chunks", "packs", "tables", "quarantine"
WRITER_KEY = "writer.json"
# link() is how a local write-once publish refuses to replace; filesystems without hard links say so with these
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}

try:  # Linux: start writeback of a file without waiting for it (the fsync that publishes a commit still waits)
    _libc = ctypes.CDLL(None, use_errno=True)
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (OSError, AttributeError):
    _sync_file_range = None
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Queue a written file's dirty pages for writeback now. Deferred fsyncs of a commit's chunks were done one
    by one after all writes, each waiting for its own data; with writeback started as each chunk is written,
    the disk works while later chunks are produced and the final fsyncs mostly find clean pages."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # advisory: an error only means no head start


def chunk_key(stream: int, k: int, obj_crc: int, head: int = 0) -> str:
    return f"{CHUNK_DIR}/{stream}/{k:010d}-{obj_crc:08x}{f'-h{head:02d}' if head else ''}.bin"


def page_key(k0: int, crc: int) -> str:
    return f"{PAGE_DIR}/{k0:010d}-{crc:08x}.json"


def manifest_key(commit: int, gen: int) -> str:
    return f"{MANIFEST_DIR}/{commit:010d}-{gen:06d}.json"


def pack_key(commit: int, gen: int) -> str:
    return f"{PACK_DIR}/{commit:010d}-{gen:06d}.pack"


def _parse_manifest_name(name: str) -> tuple[int, int] | None:
    stem = name.rsplit("/", 1)[-1]
    if not stem.endswith(".json") or stem.count("-") != 1:
        return None
    a, b = stem[:-5].split("-")
    return (int(a), int(b)) if a.isdigit() and b.isdigit() else None


def _s3(url: str) -> tuple[S3Objects, str]:
    """The transport and root ("bucket/prefix") of an s3:// URL, after one LIST that proves the bucket is there
    and the credentials work: a run that cannot commit should fail at open, not at its first commit."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError("no bucket in the URL (s3://bucket/prefix)")
    fs = S3Objects(bucket)
    fs.check_bucket()
    return fs, f"{bucket}/{prefix}".rstrip("/")


class Durable:
    """Thin, typed wrapper of one fsspec filesystem rooted at `url`. Keys are '/'-separated and relative."""

    def __init__(self, url: str, *, fsync: bool = True, create: bool = True):
        if not url:
            raise DurableStoreError("durable URL is empty")
        try:
            self.fs, self.root = _s3(url) if url.startswith("s3://") else fsspec.core.url_to_fs(url)
        except (ValueError, ImportError, OSError) as e:
            raise DurableStoreError(f"durable URL {url!r}: {e}") from e
        self.url, self.fsync = url, fsync
        self.local = isinstance(self.fs, LocalFileSystem)
        # False where the store overwrites a name on a create-only PUT: publish() then looks before it writes
        self.exclusive = True
        if isinstance(self.fs, S3Objects) and create:
            try:
                self.exclusive = self.fs.refuses_second_create(self.root)
            except OSError as e:
                raise DurableStoreError(f"durable URL {url!r} is not writable: {e}") from e
            if not self.exclusive:
                log.warning("%s does not refuse a create-only PUT of a taken name (If-None-Match): manifests are "
                            "published after a HEAD instead, so two writers that raced to one generation can "
                            "replace each other's manifest of one commit", url)
        self.root = self.root.rstrip("/") if self.root != "/" else self.root
        if self.local and create:
            parent = os.path.dirname(os.path.abspath(self.root))
            if not os.path.isdir(parent):
                raise DurableStoreError(f"durable URL {url!r}: parent folder {parent} does not exist")
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise DurableStoreError(f"durable URL {url!r} cannot be created: {e}") from e

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    # --- objects -----------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | list[bytes], *, fsync: bool | None = None) -> None:
        """Write one whole object; locally via tmp + rename so a reader never sees a torn file.

        data may be a list of parts, written in order (locally without joining them into one copy first).
        fsync=False defers the flush to `sync()`: chunks are flushed together before the manifest is written.
        """
        p = self.path(key)
        try:
            if self.local:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as f:
                    f.writelines([data] if isinstance(data, bytes | bytearray | memoryview) else data)
                    if self.fsync if fsync is None else fsync:
                        f.flush()
                        os.fsync(f.fileno())
                    elif self.fsync:
                        f.flush()
                        start_writeback(f.fileno())
                os.replace(tmp, p)
            else:
                self.fs.pipe_file(p, data if isinstance(data, bytes | bytearray | memoryview) else b"".join(data))
        except OSError as e:
            raise DurableStoreError(f"writing {self.url}/{key}: {e}") from e

    def publish(self, key: str, data: bytes, check: Callable[[], None]) -> None:
        """Write-once `key`: the bytes are written and flushed first, then `check()` runs (the writer fence), then
        the object appears whole, and never over an existing one (FileExistsError).

        Locally that is tmp + fsync, check, link(tmp, key): the check is two syscalls away from the publish. On
        a filesystem without hard links the last step is an exists() test and a rename (not exclusive). Elsewhere it
        is check, then one create-only PUT (`pipe_file(mode="create")`): on s3:// a PUT with `If-None-Match: *`,
        which the store refuses (412) when the name is taken, or, on a store found at open to ignore that header,
        a HEAD then a plain PUT (not exclusive); fsspec filesystems do what their mode="create" does (exclusive on
        the memory fs).
        """
        p = self.path(key)
        if not self.local:
            check()
            try:
                if not self.exclusive and self.fs.exists(p):
                    raise FileExistsError(errno.EEXIST, "exists", p)
                self.fs.pipe_file(p, data, mode="create" if self.exclusive else "overwrite")
            except FileExistsError:
                raise
            except OSError as e:
                raise DurableStoreError(f"writing {self.url}/{key}: {e}") from e
            return
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            check()
            try:
                os.link(tmp, p)
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                if os.path.exists(p):
                    raise FileExistsError(errno.EEXIST, "exists", p) from e
                os.replace(tmp, p)
        except FileExistsError:
            raise
        except OSError as e:
            raise DurableStoreError(f"writing {self.url}/{key}: {e}") from e
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def quarantine(self, key: str, record: dict) -> str:
        """Move a corrupt object out of the way to a new unique key under quarantine/ and write a record beside it.

        Restore treats a manifest whose chunk is gone as unrestorable, so moving (not marking) is what makes every
        later restore skip the manifests that reference it, and it frees `key` for a writer that regenerates the
        same content (the key is a checksum of it). Locally the move is one rename; elsewhere fsspec's mv is copy +
        delete: a crash between them leaves the corrupt object in place, found again at the next fetch.
        """
        stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        qkey = f"{QUARANTINE_DIR}/{key}.{stamp}"
        moved = True
        try:
            if self.local:
                os.makedirs(os.path.dirname(self.path(qkey)), exist_ok=True)
                os.rename(self.path(key), self.path(qkey))
            else:
                self.fs.mv(self.path(key), self.path(qkey))
        except FileNotFoundError:
            moved = False  # another process moved it first: its record names it
        except OSError as e:
            raise DurableStoreError(f"moving corrupt {self.url}/{key} to {qkey}: {e}") from e
        body = json.dumps({**record, "key": key, "moved_to": qkey if moved else None, "time": time.time()}, indent=1)
        try:
            self.publish(f"{qkey}.json", body.encode(), check=lambda: None)
        except DurableStoreError as e:  # the move is what restore relies on; the record is for people
            log.warning("quarantined %s/%s as %s, but its record could not be written: %s", self.url, key, qkey, e)
        self.sync_dirs([key, qkey])
        return qkey

    def sync(self, keys: list[str]) -> None:
        """fsync the files `keys` and their folders (local filesystems with fsync on; elsewhere a no-op)."""
        if not (self.local and self.fsync):
            return
        for k in keys:
            fd = os.open(self.path(k), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.sync_dirs(keys)

    def sync_dirs(self, keys: list[str]) -> None:
        """fsync the folders holding `keys` so the renames survive a node crash (local filesystems only)."""
        if not (self.local and self.fsync):
            return
        for d in sorted({os.path.dirname(self.path(k)) for k in keys}):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(key))
        except (OSError, KeyError) as e:
            raise DurableStoreError(f"reading {self.url}/{key}: {e}") from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of one object."""
        try:
            return self.fs.cat_file(self.path(key), start=start, end=end)
        except (OSError, KeyError) as e:
            raise DurableStoreError(f"reading {self.url}/{key}[{start}:{end}]: {e}") from e

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            try:
                self.fs.rm_file(self.path(k))
            except (FileNotFoundError, KeyError):
                pass

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under `prefix` (temporary files included, for the sweeper)."""
        base = self.path(prefix)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        cut = len(self.root) + 1
        return {p[cut:] if p.startswith(self.root + "/") else p: int(v.get("size") or 0)
                for p, v in found.items()}

    # --- manifests -----------------------------------------------------------------------------------------
    def manifests(self) -> list[tuple[int, int, str]]:
        """(commit, generation, key) of every published manifest, newest first."""
        out = []
        for key in self.list_sizes(MANIFEST_DIR):
            cg = _parse_manifest_name(key)
            if cg is not None:
                out.append((*cg, key))
        return sorted(out, reverse=True)

    def stray_manifest_files(self) -> list[str]:
        """Leftover temporary files in the manifest folder (a writer killed between write and rename)."""
        return [k for k in self.list_sizes(MANIFEST_DIR) if _parse_manifest_name(k) is None]

    def read_json(self, key: str) -> dict:
        return json.loads(self.get(key))

    # --- single writer --------------------------------------------------------------------------------------
    def read_writer(self) -> dict | None:
        """The writer token, checked (parse_writer); None when there is none. CorruptChunkError when damaged."""
        try:
            body = self.fs.cat_file(self.path(WRITER_KEY))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise DurableStoreError(f"reading {self.url}/{WRITER_KEY}: {e}") from e
        return parse_writer(body, f"{self.url}/{WRITER_KEY}")

    def take_over(self, token: str) -> int:
        """Register `token` as the writer; returns its generation. Re-opening with the same token keeps it.

        The new generation is above both the token's and every published manifest's, so a stale token (an older
        writer.json put back) cannot hand out a generation already used. A damaged token fences nobody it can
        name: it is logged and replaced (the token guards commits, not data; every writer whose token it was
        finds it replaced at its next check)."""
        try:
            cur = self.read_writer()
        except CorruptChunkError as e:
            log.warning("%s; replacing it with this writer's token", e)
            cur = None
        if cur is not None and cur["token"] == token:
            return int(cur["generation"])
        floor = max((g for _, g, _ in self.manifests()), default=0)
        gen = max(int(cur["generation"]) if cur else 0, floor) + 1
        doc = {"token": token, "generation": gen, "time": time.time()}
        self.put(WRITER_KEY, json.dumps(doc | {"crc": json_checksum(doc)}).encode())
        self.sync_dirs([WRITER_KEY])
        return gen

    def check_writer(self, token: str, gen: int) -> None:
        try:
            cur = self.read_writer()
        except CorruptChunkError as e:
            raise CorruptChunkError(f"{e}: cannot tell whether a newer writer took over; commit aborted, no "
                                    "manifest published (the next opener replaces the token)", key=e.key,
                                    manifest="(commit)", kind=e.kind, problem=e.problem) from None
        if cur is None or cur["token"] != token or cur["generation"] != gen:
            stale = cur is not None and cur["generation"] < gen
            raise WriterFencedError(
                f"writer {token!r} (generation {gen}) was fenced by {cur and cur['token']!r} "
                f"(generation {cur and cur['generation']}) in {self.url}; "
                + ("its writer.json is older than this writer's (a stale copy put back?); " if stale else "")
                + "commit aborted, no manifest published")


def json_damage(body: bytes) -> str:
    """What is wrong with JSON bytes that do not parse: "truncated" when they do not end as every document we
    write does (with its closing brace), else "unparsable"."""
    return "unparsable" if body.rstrip().endswith(b"}") else "truncated"


def parse_writer(body: bytes, where: str) -> dict:
    """The writer token document {token, generation, time, crc} from its bytes, checked: CorruptChunkError
    (kind "writer") naming what is wrong. A token written before it carried "crc" is checked for shape only."""
    def bad(problem: str, detail: str) -> CorruptChunkError:
        return CorruptChunkError(f"writer token {where} is damaged ({problem}): {detail}", key=WRITER_KEY,
                                 manifest="", kind="writer", problem=problem)

    try:
        doc = json.loads(body)
    except ValueError as e:
        raise bad(json_damage(body), str(e)) from None
    if not isinstance(doc, dict):
        raise bad("invalid", f"a JSON {type(doc).__name__}, not an object")
    if "crc" in doc and doc["crc"] != json_checksum(doc):
        raise bad("checksum mismatch", f"crc {doc['crc']!r}, content {json_checksum(doc)}")
    extra = sorted(set(doc) - {"token", "generation", "time", "crc"})
    gen = doc.get("generation")
    if extra or not isinstance(doc.get("token"), str) or not doc["token"] or not isinstance(gen, int) \
            or isinstance(gen, bool) or gen < 1:
        raise bad("invalid", f"fields {sorted(doc)}, token {doc.get('token')!r}, generation {gen!r}")
    return doc
