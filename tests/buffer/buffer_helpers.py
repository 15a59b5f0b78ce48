"""Deterministic synthetic steps shared by the buffer tests and the chaos writer subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from buffer import FieldSpec, Replay, ReplayConfig
from buffer.durable import Durable
from buffer.manifest import load_pages

SCHEMA = {
    "image": FieldSpec((6, 6, 3), "uint8"),  # > 64 bytes: decoded per inner chunk; the rest whole
    "reward": FieldSpec((), "float32"),
    "action": FieldSpec((), "int32"),
    "is_first": FieldSpec((), "bool"),
    "is_last": FieldSpec((), "bool"),
    "vec": FieldSpec((2,), "float64"),
}


def make_step(i: int, num_streams: int) -> dict[str, np.ndarray]:
    """Step i of every stream; a pure function of (i, stream), so any process can regenerate any step."""
    w = np.arange(num_streams)
    ep_len = 5 + 3 * w  # streams end episodes at different times
    pos = i % ep_len
    img = ((i * 7 + w[:, None, None, None] * 13 + np.arange(108).reshape(6, 6, 3)) % 251).astype(np.uint8)
    return {
        "image": img,
        "reward": (i * 0.5 + w).astype(np.float32),
        "action": (i * 31 + w * 17).astype(np.int32) % 9,
        "is_first": pos == 0,
        "is_last": pos == ep_len - 1,
        "vec": np.stack([np.full(num_streams, float(i)), w.astype(np.float64)], -1),
    }


def expected(stream: int, start: int, stop: int, num_streams: int) -> dict[str, np.ndarray]:
    steps = [make_step(i, num_streams) for i in range(start, stop)]
    return {k: np.stack([s[k][stream] for s in steps]) for k in SCHEMA}


def make_replay(scratch: str, durable: str, *, num_streams: int = 2, capacity: int = 400, chunk: int = 16,
                inner: int = 4, batch: int = 3, length: int = 6, seed: int = 7, lazy: bool = True,
                prefetch: int = 2, keep: int = 3, token: str = "w1", force_first: bool = False,
                fsync: bool = False, table_page: int = 2, codec: str = "zstd") -> Replay:
    # pages of 2 shards: most tests' commits write and read pages (the default, 16, is reached by few of them)
    cfg = ReplayConfig(capacity=capacity, chunk=chunk, inner=inner, keep=keep, prefetch=prefetch, lazy=lazy,
                       fsync=fsync, table_page=table_page, codec=codec)
    return Replay(SCHEMA, num_streams, scratch, durable, cfg, batch=batch, length=length, seed=seed,
                  force_first=force_first, writer_token=token)


def assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        assert a[k].tobytes() == b[k].tobytes(), k


def read_manifest(durable: Path, key: str) -> dict:
    """Manifest `key` ("manifests/<name>.json") of a local durable folder, with the rows its pages hold."""
    return load_pages(Durable(str(durable), create=False), json.loads((durable / key).read_text()), key)
