"""The data path: batch assembly across threads, lazily decoded small fields, pipelined shard encoding,
early writeback of durable chunks. Each must give the same bytes as the plain path it replaced."""

from __future__ import annotations

import os

import numpy as np
import pytest

from buffer import CorruptChunkError, FieldSpec, Replay, ReplayConfig
from buffer.codec import ShardCodec
from buffer.durable import Durable, start_writeback
from tests.buffer.buffer_helpers import SCHEMA, assert_batches_equal, expected, make_replay, make_step


def fill(r: Replay, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, r.num_streams))


def _shard_files(scratch) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), scratch): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(scratch) for f in fs if "/c/" in os.path.join(d, f) + "/"}


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_overlapping_sequences_share_decodes_and_match_the_steps(tmp_path, threads):
    # 2 streams and long sequences: most inner chunks are wanted by several rows, whole by some and in part
    # by others, and some rows end in the open tail.
    cfg = ReplayConfig(capacity=2 * 200, chunk=16, inner=4, prefetch=0, threads=threads, fsync=False)
    with Replay(SCHEMA, 2, str(tmp_path / "s"), str(tmp_path / "d"), cfg, batch=24, length=23, seed=3,
                writer_token="w") as r:
        fill(r, 0, 90)
        for _ in range(6):
            b = r.sample()
            for row in range(24):
                w, s = int(b["vec"][row, 0, 1]), int(b["vec"][row, 0, 0])
                assert_batches_equal({k: v[row] for k, v in b.items()}, expected(w, s, s + 23, 2))


def test_results_do_not_depend_on_threads_or_prefetch(tmp_path):
    runs = []
    for threads, prefetch in [(1, 0), (2, 2), (3, 1)]:
        r = make_replay(str(tmp_path / f"s{threads}"), str(tmp_path / f"d{threads}"), prefetch=prefetch,
                        capacity=2 * 70, batch=9, length=11)
        r._pool._max_workers = threads  # noqa: SLF001 - threads only changes the pool size
        out = []
        for n in (40, 3, 0, 25, 16, 0, 30):
            fill(r, r.info["t"], r.info["t"] + n)
            out.append(r.sample())
        runs.append(out)
        r.close()
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert_batches_equal(a, b)


def test_pipelined_shards_equal_whole_shard_encoding_also_after_a_mid_shard_restore(tmp_path):
    a = make_replay(str(tmp_path / "sa"), str(tmp_path / "da"), capacity=2 * 400)
    fill(a, 0, 43)  # mid-shard (chunk 16, inner 4): 2 full shards, tail of 11 = 2 full inner chunks + 3
    a.commit({})
    fill(a, 43, 100)
    a.close()
    b = make_replay(str(tmp_path / "sb"), str(tmp_path / "da"), capacity=2 * 400, token="b")
    b.restore()  # the restored tail's inner chunks were never encoded in this process
    fill(b, 43, 100)
    b.close()
    fa, fb = _shard_files(tmp_path / "sa"), _shard_files(tmp_path / "sb")
    assert fa and fa == fb
    codec = ShardCodec(16, 4, 1)
    for k in range(100 // 16):
        for f in SCHEMA:
            steps = expected(1, k * 16, (k + 1) * 16, 2)[f]
            ndim = len(SCHEMA[f].shape)
            assert fa["/".join([f, "c", "1", str(k), *["0"] * ndim])] == codec.encode(steps), (k, f)


def test_small_fields_decode_lazily_and_a_damaged_one_is_named_then_refetched(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), prefetch=0)
    fill(r, 0, 40)
    r.commit({})
    r.close()
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), prefetch=0, token="w2", lazy=False)
    r.restore()
    assert_batches_equal(r.read(0, 5, 7), expected(0, 5, 7, 2))
    entry = r._scratch._small[("reward", 0, 0)]  # noqa: SLF001
    assert entry[3].tolist() == [False, True, False, False]  # only the inner chunk that was read
    path = r._scratch.file("reward", 1, 1)  # noqa: SLF001
    data = bytearray(open(path, "rb").read())
    data[3] ^= 0xFF  # inside inner chunk 0 of shard 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorruptChunkError, match="reward"):
        r.read(1, 16, 20)
    assert_batches_equal(r.read(1, 16, 20), expected(1, 16, 20, 2))  # refetched from the durable copy
    r.close()


def test_scratch_still_reads_as_zarr_after_pipelined_writes(tmp_path):
    zarr = pytest.importorskip("zarr")
    schema = {"x": FieldSpec((3,), "float32"), "flag": FieldSpec((), "bool")}
    cfg = ReplayConfig(capacity=100, chunk=8, inner=2, prefetch=0, threads=2, fsync=False)
    with Replay(schema, 3, str(tmp_path / "s"), str(tmp_path / "d"), cfg, batch=1, length=2,
                writer_token="w") as r:
        for i in range(20):
            x = (np.full((3, 3), i) + np.arange(3)[:, None]).astype(np.float32)
            r.add({"x": x, "flag": np.arange(3) == i % 3})
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    x = g["x"][:, :16]
    np.testing.assert_array_equal(x[:, :, 0], np.arange(16)[None, :] + np.arange(3)[:, None])
    np.testing.assert_array_equal(g["flag"][:, :16], np.arange(16)[None, :] % 3 == np.arange(3)[:, None])


def test_deferred_fsync_put_starts_writeback_and_keeps_bytes(tmp_path):
    d = Durable(str(tmp_path / "d"), fsync=True)
    payload = os.urandom(1 << 20)
    d.put("chunks/0/x.bin", payload, fsync=False)
    d.sync(["chunks/0/x.bin"])
    assert d.get("chunks/0/x.bin") == payload
    with open(tmp_path / "f", "wb") as fh:  # harmless on any file, also an empty one
        start_writeback(fh.fileno())


def test_tail_decodes_from_one_frame_or_from_inner_frames_plus_the_rest():
    codec = ShardCodec(16, 4, 1)
    steps = np.random.default_rng(0).integers(0, 5, (11, 6, 6, 3)).astype(np.uint8)
    frames = b"".join(codec.encode_inner(steps[j * 4:(j + 1) * 4])[:-4] for j in range(2))
    for enc in (codec.encode_tail(steps), frames + codec.encode_tail(steps[8:])):  # before / since reuse
        out = np.empty_like(steps)
        codec.decode_tail(enc, out)
        assert out.tobytes() == steps.tobytes()


def test_commit_reuses_inner_frames_for_the_tail_and_restores_exactly(tmp_path):
    a = make_replay(str(tmp_path / "sa"), str(tmp_path / "da"), capacity=2 * 400)
    fill(a, 0, 27)  # tail of 11: 2 full inner chunks (already encoded by add) + 3 steps
    a.commit({}, background=True)
    fill(a, 27, 30)  # a background commit must not see these
    a.wait()
    a.close()
    b = make_replay(str(tmp_path / "sb"), str(tmp_path / "da"), capacity=2 * 400, token="b")
    b.restore()
    assert b.info["t"] == 27
    for w in range(2):
        assert_batches_equal(b.read(w, 0, 27), expected(w, 0, 27, 2))
    b.commit({})  # the restored tail's inner chunks are encoded now, then reused by the shard
    fill(b, 27, 40)
    for w in range(2):
        assert_batches_equal(b.read(w, 0, 40), expected(w, 0, 40, 2))
    b.close()


def test_put_writes_a_list_of_parts_as_one_object(tmp_path):
    d = Durable(str(tmp_path / "d"), fsync=False)
    d.put("chunks/1/y.bin", [b"ab", b"", b"cde"])
    assert d.get("chunks/1/y.bin") == b"abcde"
