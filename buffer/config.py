"""Static configuration of the replay buffer: the step schema and `ReplayConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FieldSpec:
    """One step of one stream: `shape` excludes the stream and time axes; `dtype` is a numpy dtype name."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        dt = np.dtype(self.dtype)
        if dt.kind not in "biuf" or dt.byteorder == ">":
            raise ValueError(f"FieldSpec dtype {self.dtype!r}: only little-endian bool/int/uint/float "
                             "are stored")
        object.__setattr__(self, "dtype", dt.name)

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @property
    def step_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


Schema = dict[str, FieldSpec]


def schema_to_json(schema: Schema) -> dict:
    return {k: schema[k].to_json() for k in sorted(schema)}


CODECS = ("zstd", "lz4")
# Past this many decode threads a sample is bound by memory bandwidth, not cores (a 16-core node measured 0.73 of
# a memmap read at 8).
MAX_AUTO_THREADS = 16


@dataclass(frozen=True)
class ReplayConfig:
    """Replay settings (the `replay` node of the config tree).

    capacity: total steps kept over all streams (FIFO; each stream keeps capacity // num_streams).
    chunk: steps per stream in one shard file (the unit written to durable storage, once).
    inner: steps per compressed inner chunk inside a shard (the unit decoded when sampling).
    keep: number of durable manifests kept; chunks no kept manifest references are deleted.
    codec: "zstd" or "lz4" (blosc-lz4): lz4 stores ~1.3x more, samples 1.5-1.7x and adds 1.1-1.7x faster; a store
      keeps the codec it was made with (restoring it with the other one is a SchemaError).
    zstd_level: zstd level of every chunk and tail (codec "zstd").
    prefetch: batches planned and assembled ahead in a background thread (0 disables).
    lazy: restore() returns before every chunk is on scratch; missing chunks are fetched on demand.
    threads: worker threads for chunk encode/decode and durable transfers; 0 (default): the cores this process may
      use where it runs (`os.sched_getaffinity`), at most 16. Decoding is what a warm sample spends its time on,
      and on a 2-core machine the ratio to a memmap read grew 1.5-1.9x from the second core.
    fsync: fsync durable files (local filesystems) before publishing the manifest.
    cache_mb: decoded inner chunks kept in RAM (LRU), filled by prefetch; sample() copies hits and decodes
      misses straight into the batch (they are not cached).
    table_page: finished shards (per stream) whose rows a commit writes once as a page, which later manifests
      reference instead of repeating the rows; a manifest holds at most this many shards' rows inline.
    """

    capacity: int
    chunk: int = 1024
    inner: int = 64
    keep: int = 3
    codec: str = "zstd"
    zstd_level: int = 1
    prefetch: int = 2
    lazy: bool = True
    threads: int = 0
    fsync: bool = True
    cache_mb: int = 512
    table_page: int = 16

    def __post_init__(self) -> None:
        if min(self.capacity, self.chunk, self.inner, self.table_page) <= 0 or self.keep < 1 or self.threads < 0:
            raise ValueError(f"ReplayConfig: capacity, chunk, inner, table_page must be > 0, keep >= 1, threads >= 0 "
                             f"(0: the usable cores): {self}")
        if self.chunk % self.inner:
            raise ValueError(f"ReplayConfig: chunk={self.chunk} must be a multiple of inner={self.inner}")
        if self.codec not in CODECS:
            raise ValueError(f"ReplayConfig: codec={self.codec!r} is unknown; expected one of {list(CODECS)}")
        if self.prefetch < 0:
            raise ValueError(f"ReplayConfig: prefetch={self.prefetch} must be >= 0")

    @property
    def io_threads(self) -> int:
        """`threads`, with 0 resolved where the buffer runs (a config is composed on a login node)."""
        return self.threads or min(MAX_AUTO_THREADS, len(os.sched_getaffinity(0)))
