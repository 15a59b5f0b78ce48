"""Durable tier: objects, manifests and the writer token behind any fsspec URL.

Layout under the root:
  writer.json                          current writer {token, generation}; a newer writer fences older ones
  chunks/<stream>/<k>-<crc>.bin        finished shard k of one stream, all fields concatenated; written once
  packs/<commit>-<gen>.pack            partial tails and caller blobs of one commit
  manifests/<commit>-<gen>.json        the commit, written last (tmp + rename locally, one PUT elsewhere)
"""

from __future__ import annotations

import ctypes
import json
import os
import time
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import DurableStoreError, WriterFencedError

MANIFEST_DIR, CHUNK_DIR, PACK_DIR = "manifests", "chunks", "packs"

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


def chunk_key(stream: int, k: int, obj_crc: int) -> str:
    return f"{CHUNK_DIR}/{stream}/{k:010d}-{obj_crc:08x}.bin"


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


class Durable:
    """Thin, typed wrapper of one fsspec filesystem rooted at `url`. Keys are '/'-separated and relative."""

    def __init__(self, url: str, *, fsync: bool = True, create: bool = True):
        if not url:
            raise DurableStoreError("durable URL is empty")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ValueError, ImportError) as e:
            raise DurableStoreError(f"durable URL {url!r}: {e}") from e
        self.url, self.fsync = url, fsync
        self.local = isinstance(self.fs, LocalFileSystem)
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
        try:
            return json.loads(self.fs.cat_file(self.path("writer.json")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise DurableStoreError(f"reading {self.url}/writer.json: {e}") from e

    def take_over(self, token: str) -> int:
        """Register `token` as the writer; returns its generation. Re-opening with the same token keeps it."""
        cur = self.read_writer()
        if cur is not None and cur.get("token") == token:
            return int(cur["generation"])
        gen = (int(cur["generation"]) + 1) if cur else 1
        self.put("writer.json", json.dumps({"token": token, "generation": gen, "time": time.time()}).encode())
        self.sync_dirs(["writer.json"])
        return gen

    def check_writer(self, token: str, gen: int) -> None:
        cur = self.read_writer()
        if cur is None or cur.get("token") != token or int(cur.get("generation", -1)) != gen:
            raise WriterFencedError(
                f"writer {token!r} (generation {gen}) was fenced by {cur and cur.get('token')!r} "
                f"(generation {cur and cur.get('generation')}) in {self.url}; "
                "commit aborted, no manifest published")
