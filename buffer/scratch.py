"""Scratch tier: a zarr v3 group on node-local disk, one sharded array per field, shards written whole."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections import OrderedDict

import numpy as np

from .codec import ShardCodec, checksum, shard_key, zarr_array_meta
from .config import Schema
from .errors import ScratchError

SMALL_FIELD_STEP_BYTES = 64
SMALL_CACHE_BYTES = 64 * 2**20


class Scratch:
    """Shard files of the scratch zarr group; thread-safe for distinct shards."""

    def __init__(self, path: str, schema: Schema, num_streams: int, codec: ShardCodec, level: int):
        """`level`: the zstd level zarr.json records (codec "zstd")."""
        self.path, self.schema, self.codec = os.path.abspath(path), schema, codec
        self.fields = sorted(schema)
        self._small_fields = frozenset(f for f in self.fields if schema[f].step_bytes <= SMALL_FIELD_STEP_BYTES)
        self._index: dict[tuple[str, int, int], list[list[int]]] = {}
        # Fields of a few bytes per step (reward, flags, action) cost a file access per inner chunk for almost
        # no data; their shard files are read whole once and kept, decoded as needed (see small_inner).
        self._small: OrderedDict[tuple[str, int, int], tuple] = OrderedDict()
        self._small_bytes = 0
        self._lock = threading.Lock()
        try:
            os.makedirs(self.path, exist_ok=True)
            self._write_json("zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": {}})
            for f in self.fields:
                meta = zarr_array_meta(num_streams, schema[f], codec.chunk, codec.inner, level, codec.name)
                self._write_json(f"{f}/zarr.json", meta)
        except OSError as e:
            raise ScratchError(f"scratch {self.path}: {e}") from e

    def _write_json(self, rel: str, obj: dict) -> None:
        p = os.path.join(self.path, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".tmp", "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(p + ".tmp", p)

    def file(self, field: str, w: int, k: int) -> str:
        return os.path.join(self.path, shard_key(field, len(self.schema[field].shape), w, k))

    def write(self, field: str, w: int, k: int, data: bytes) -> None:
        """Write one shard; a torn file (crash, full disk) never passes the checksum check on restore."""
        p = self.file(field, w, k)
        self._forget(field, w, k)
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as fh:
                fh.write(data)
        except OSError as e:
            try:
                os.unlink(p)
            except OSError:
                pass
            full = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise ScratchError(f"scratch write of {p} failed{full}: {e}; durable tier untouched") from e

    def read(self, field: str, w: int, k: int) -> bytes:
        with open(self.file(field, w, k), "rb") as fh:
            return fh.read()

    def verify(self, field: str, w: int, k: int, size: int, crc: int) -> bool:
        try:
            data = self.read(field, w, k)
        except OSError:
            return False
        return len(data) == size and checksum(data) == crc

    def read_inner(self, field: str, w: int, k: int, j: int) -> bytes:
        """Encoded bytes of inner chunk j of shard (field, w, k): one index lookup and one pread."""
        key, p = (field, w, k), self.file(field, w, k)
        fd = os.open(p, os.O_RDONLY)
        try:
            index = self._index.get(key)
            if index is None:
                n = self.codec.index_nbytes()
                size = os.fstat(fd).st_size
                index = self.codec.parse_index(os.pread(fd, n, size - n), p).tolist()
                with self._lock:
                    self._index[key] = index
            off, nbytes = index[j]
            return os.pread(fd, nbytes, off)
        finally:
            os.close(fd)

    def _forget(self, field: str, w: int, k: int) -> None:
        with self._lock:
            self._index.pop((field, w, k), None)
            ent = self._small.pop((field, w, k), None)
            self._small_bytes -= 0 if ent is None else _small_nbytes(ent)

    def drop_caches(self) -> None:
        """Forget cached shard indexes and small-field shards (benchmarks of cold reads)."""
        with self._lock:
            self._index.clear()
            self._small.clear()
            self._small_bytes = 0

    def is_small(self, field: str) -> bool:
        return field in self._small_fields

    def small_inner(self, field: str, w: int, k: int, j: int) -> np.ndarray:
        """Decoded inner chunk j (inner, *shape) of a small field's shard; read-only for callers.

        The shard file (a few KB) is read once and kept with its decoded steps (LRU, SMALL_CACHE_BYTES);
        only inner chunks someone asked for are decoded: a tiny zstd frame costs ~20 us, mostly fixed cost,
        so decoding whole shards up front cost more than the image chunks of a short sequence.
        """
        key = (field, w, k)
        with self._lock:
            ent = self._small.get(key)
            if ent is not None:
                self._small.move_to_end(key)
        if ent is None:
            ent = self._load_small(field, w, k)
        data, index, arr, done, lock = ent
        inner = self.codec.inner
        part = arr[j * inner:(j + 1) * inner]
        if not done[j]:
            # zstd may park literals in the unused end of its output while decoding, so a reader must never
            # see a part being (re)decoded: decode once, under the entry's lock, then publish the flag.
            with lock:
                if not done[j]:
                    off, nbytes = index[j]
                    self.codec.decode_inner(data[off:off + nbytes], part, f"{self.file(field, w, k)}[{j}]")
                    done[j] = True
        return part

    def _load_small(self, field: str, w: int, k: int) -> tuple:
        p, spec = self.file(field, w, k), self.schema[field]
        data = self.read(field, w, k)
        index = self.codec.parse_index(data[-self.codec.index_nbytes():], p).tolist()
        ent = (data, index, np.empty((self.codec.chunk, *spec.shape), spec.dtype),
               np.zeros(self.codec.n_inner, bool), threading.Lock())
        with self._lock:
            if (field, w, k) in self._small:
                return self._small[(field, w, k)]
            self._small[(field, w, k)] = ent
            self._small_bytes += _small_nbytes(ent)
            while self._small_bytes > SMALL_CACHE_BYTES and len(self._small) > 1:
                _, old = self._small.popitem(last=False)
                self._small_bytes -= _small_nbytes(old)
        return ent

    def delete_shard(self, k: int, streams: range) -> None:
        for f in self.fields:
            for w in streams:
                self._forget(f, w, k)
                try:
                    os.unlink(self.file(f, w, k))
                except FileNotFoundError:
                    pass

    def sweep(self, keep: range) -> int:
        """Delete shard files whose shard number lies outside `keep` (left by an uncommitted past run)."""
        removed = 0
        for f in self.fields:
            base = os.path.join(self.path, f, "c")
            for root, _dirs, files in os.walk(base):
                for name in files:
                    p = os.path.join(root, name)
                    parts = os.path.relpath(p, base).split(os.sep)
                    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) not in keep:
                        os.unlink(p)
                        removed += 1
        self.drop_caches()
        return removed


def _small_nbytes(ent: tuple) -> int:
    return len(ent[0]) + ent[2].nbytes
