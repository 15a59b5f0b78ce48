"""Unit tests of the replay buffer: schema checks, add/read/evict, sampling, commit, GC, fencing, faults."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from buffer import (
    CorruptChunkError,
    DurableStoreError,
    FieldSpec,
    NoRestorableCommitError,
    Replay,
    ReplayConfig,
    ReplayError,
    SchemaError,
    ScratchError,
    WriterFencedError,
    read_latest_manifest,
)
from buffer.codec import ShardCodec
from tests.buffer.buffer_helpers import (
    SCHEMA,
    assert_batches_equal,
    expected,
    make_replay,
    make_step,
    read_manifest,
)


def fill(r: Replay, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, r.num_streams))


def durable_files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}


# --- schema and config ---------------------------------------------------------------------------------
def test_add_rejects_wrong_key_shape_dtype(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"))
    good = make_step(0, 2)
    with pytest.raises(SchemaError, match="keys"):
        r.add({**good, "extra": good["reward"]})
    with pytest.raises(SchemaError, match=r"'image' is uint8\[2, 6, 6\], schema wants uint8\[2, 6, 6, 3\]"):
        r.add({**good, "image": good["image"][..., 0]})
    with pytest.raises(ValueError, match=r"'reward' is float64\[2\], schema wants float32\[2\]"):
        r.add({**good, "reward": good["reward"].astype(np.float64)})
    assert r.info["t"] == 0
    r.close()


def test_config_and_spec_validation(tmp_path):
    with pytest.raises(ValueError, match="multiple of inner"):
        ReplayConfig(capacity=10, chunk=10, inner=4)
    with pytest.raises(ValueError, match="only little-endian"):
        FieldSpec((1,), ">f4")
    with pytest.raises(SchemaError, match="is_first"):
        Replay({"x": FieldSpec((), "float32")}, 1, str(tmp_path / "s"), str(tmp_path / "d"),
               ReplayConfig(capacity=100), batch=1, length=2, force_first=True)
    with pytest.raises(ValueError, match="capacity"):
        make_replay(str(tmp_path / "s"), str(tmp_path / "d"), capacity=10, length=6)


# --- add, read, evict ------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_read_back_across_shards_and_tail_and_zarr_opens_scratch(tmp_path, codec):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), capacity=1000, codec=codec)
    fill(r, 0, 75)  # 4 finished shards of 16 plus an 11-step tail
    for w in range(2):
        assert_batches_equal(r.read(w, 0, 75), expected(w, 0, 75, 2))
        assert_batches_equal(r.read(w, 13, 70), expected(w, 13, 70, 2))
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    for k in SCHEMA:
        np.testing.assert_array_equal(g[k][1, 0:64], expected(1, 0, 64, 2)[k])
    r.close()


def test_fifo_eviction_window_and_no_preallocation(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), capacity=2 * 40)
    fill(r, 0, 130)
    assert r.info["lo"] == 90 and r.info["t"] == 130 and len(r) == 80
    assert_batches_equal(r.read(1, 90, 130), expected(1, 90, 130, 2))
    with pytest.raises(ValueError, match="outside window"):
        r.read(0, 89, 95)
    files = durable_files(tmp_path / "s")
    shards = {int(p.split(os.sep)[3]) for p in files if p.startswith(f"reward{os.sep}c")}
    assert shards == {5, 6, 7}, shards  # shards wholly before lo=90 (k < 5) are deleted; 8 is the open tail
    big = make_replay(str(tmp_path / "s2"), str(tmp_path / "d2"), capacity=10**9)
    fill(big, 0, 20)
    size = sum(os.path.getsize(tmp_path / "s2" / p) for p in durable_files(tmp_path / "s2"))
    assert size < 100_000, size
    r.close()
    big.close()


# --- sampling --------------------------------------------------------------------------------------------
def test_sample_shapes_and_contents_match_the_added_steps(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), batch=5, length=9)
    fill(r, 0, 50)
    b = r.sample()
    assert {k: v.shape for k, v in b.items()} == {
        "image": (5, 9, 6, 6, 3), "reward": (5, 9), "action": (5, 9), "is_first": (5, 9),
        "is_last": (5, 9), "vec": (5, 9, 2)}
    for row in range(5):
        w, start = int(b["vec"][row, 0, 1]), int(b["vec"][row, 0, 0])
        assert_batches_equal({k: v[row] for k, v in b.items()}, expected(w, start, start + 9, 2))
    r.close()


def test_sampling_is_uniform_over_streams_and_starts_and_crosses_episodes(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), batch=64, length=6, capacity=2 * 30)
    fill(r, 0, 60)  # window [30, 60): 25 starts per stream, 50 (stream, start) pairs
    counts = np.zeros((2, 25))
    crossed = 0
    for _ in range(80):
        b = r.sample()
        for w, s in zip(b["vec"][:, 0, 1].astype(int), b["vec"][:, 0, 0].astype(int), strict=True):
            counts[w, s - 30] += 1
        crossed += int(b["is_first"][:, 1:].any(axis=1).sum())
    assert counts.min() > 0 and counts.sum() == 80 * 64
    expected_count = counts.sum() / counts.size
    chi2 = ((counts - expected_count) ** 2 / expected_count).sum()
    assert chi2 < 100, chi2  # 49 dof: mean 49, 100 is far in the tail
    assert crossed > 0
    r.close()


def test_force_first_marks_first_step_only(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), batch=8, force_first=True)
    fill(r, 0, 40)
    b = r.sample()
    assert b["is_first"][:, 0].all()
    for row in range(8):
        w, s = int(b["vec"][row, 0, 1]), int(b["vec"][row, 0, 0])
        np.testing.assert_array_equal(b["is_first"][row, 1:], expected(w, s + 1, s + 6, 2)["is_first"])
    r.close()


def test_sample_needs_length_steps(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), length=6)
    fill(r, 0, 5)
    with pytest.raises(ReplayError, match="at least length=6"):
        r.sample()
    r.close()


def test_prefetch_never_changes_results_with_adds_between_samples(tmp_path):
    runs = []
    for prefetch in (0, 3):
        r = make_replay(str(tmp_path / f"s{prefetch}"), str(tmp_path / f"d{prefetch}"), prefetch=prefetch,
                        capacity=2 * 50)
        out, i = [], 0
        for n_add in [30, 0, 1, 2, 0, 17, 5, 0, 40, 3]:
            fill(r, i, i + n_add)
            i += n_add
            out.append(r.sample())
        runs.append(out)
        r.close()
    for a, b in zip(*runs, strict=True):
        assert_batches_equal(a, b)


# --- commit, restore, GC ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["path", "file", "memory"])
def test_commit_restore_roundtrip_with_blobs(tmp_path, scheme):
    durable = {"path": str(tmp_path / "d"), "file": f"file://{tmp_path}/d",
               "memory": f"memory://{tmp_path.name}/d"}[scheme]
    r = make_replay(str(tmp_path / "s"), durable)
    assert r.restore() is None
    fill(r, 0, 37)
    r.sample()
    c = r.commit({"env_steps": 37, "nested": {"a": [1, 2]}}, {"agent": b"\x00weights", "env0": b"{}"})
    info = r.info
    r.close()
    r2 = make_replay(str(tmp_path / "s2"), durable, token="w2")
    got = r2.restore()
    assert got.commit_id == c and got.extra == {"env_steps": 37, "nested": {"a": [1, 2]}}
    assert got.blobs == {"agent": b"\x00weights", "env0": b"{}"}
    assert r2.info == info
    assert_batches_equal(r2.read(1, 0, 37), expected(1, 0, 37, 2))
    latest = read_latest_manifest(durable)
    assert latest["extra"]["env_steps"] == 37 and latest["commit"] == c and "tables" not in latest
    r2.close()


def test_commit_writes_only_new_data_and_gc_keeps_k_manifests(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d), keep=2, capacity=2 * 64)
    seen: set[str] = set()
    for c in range(6):
        fill(r, c * 32, (c + 1) * 32)
        r.commit({"c": c})
        new = {f for f in durable_files(d) if f.startswith("chunks")} - seen
        seen |= new
        # each commit uploads exactly its two new shards per stream, however large the buffer already is
        assert sorted(int(os.path.basename(f)[:10]) for f in new) == [2 * c, 2 * c, 2 * c + 1, 2 * c + 1]
        assert r.stats["last_commit_chunk_bytes"] == sum(os.path.getsize(d / f) for f in new)
    assert r.stats["last_commit_bytes"] < 1.6 * r.stats["last_commit_chunk_bytes"]
    files = durable_files(d)
    manifests = sorted(f for f in files if f.startswith("manifests"))
    assert [os.path.basename(m)[:10] for m in manifests] == ["0000000005", "0000000006"]
    referenced = set()
    for m in manifests:
        from buffer.manifest import chunk_keys
        referenced |= set(chunk_keys(read_manifest(d, m)))
    assert {f for f in files if f.startswith("chunks")} == referenced
    assert len({f for f in files if f.startswith("packs")}) == 2
    r.close()


def test_background_commit_then_restore_and_wait_reraises(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"))
    fill(r, 0, 40)
    c = r.commit({"x": 1}, background=True)
    fill(r, 40, 45)  # adds while the commit runs do not leak into it
    r.wait()
    other = make_replay(str(tmp_path / "s2"), str(tmp_path / "d"), token="w2")
    r.commit({"x": 2}, background=True)
    with pytest.raises(WriterFencedError, match="fenced by 'w2'"):
        r.wait()
    got = other.restore()
    assert got.commit_id == c and other.info["t"] == 40
    other.close()
    r.close()


def test_fenced_writer_writes_nothing(tmp_path):
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "s"), str(d), token="job-1")
    fill(a, 0, 40)
    a.commit({"a": 1})
    fill(a, 40, 80)
    before = durable_files(d)
    b = make_replay(str(tmp_path / "s2"), str(d), token="job-2")
    with pytest.raises(WriterFencedError):
        a.commit({"a": 2})
    assert durable_files(d) == before
    assert b.restore().extra == {"a": 1}
    b.close()
    a.close()


def test_durable_url_errors_at_construction(tmp_path):
    (tmp_path / "file").write_text("x")
    for url in ["", str(tmp_path / "missing" / "d"), str(tmp_path / "file" / "d"), "nosuchproto://x/y"]:
        with pytest.raises(DurableStoreError):
            make_replay(str(tmp_path / "s"), url)


def test_scratch_disk_full_raises_and_leaves_durable_untouched(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    fill(r, 0, 20)
    r.commit({"ok": 1})
    before = {p: (d / p).read_bytes() for p in durable_files(d)}
    target = tmp_path / "s" / "image" / "c" / "0" / "2" / "0" / "0" / "0"
    target.parent.mkdir(parents=True)
    target.symlink_to("/dev/full")  # the next shard of stream 0 lands on a device that is always full
    with pytest.raises(ScratchError, match="disk full"):
        fill(r, 20, 48)
    with pytest.raises(ReplayError, match="unusable"):
        r.commit({"ok": 2})
    assert {p: (d / p).read_bytes() for p in durable_files(d)} == before
    r.close()


def test_schema_mismatch_on_restore(tmp_path):
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"))
    fill(r, 0, 20)
    r.commit({})
    r.close()
    schema = {**SCHEMA, "reward": FieldSpec((), "float64")}
    cfg = ReplayConfig(capacity=400, chunk=16, inner=4)
    r2 = Replay(schema, 2, str(tmp_path / "s2"), str(tmp_path / "d"), cfg, batch=3, length=6,
                writer_token="w2")
    with pytest.raises(SchemaError, match="reward"):
        r2.restore()
    r2.close()
    r3 = make_replay(str(tmp_path / "s3"), str(tmp_path / "d"), chunk=32, token="w3")
    with pytest.raises(SchemaError, match="chunk=16"):
        r3.restore()
    r3.close()
    r4 = make_replay(str(tmp_path / "s4"), str(tmp_path / "d"), token="w4", codec="lz4")
    with pytest.raises(SchemaError, match="stored codec=zstd, this buffer uses codec=lz4"):
        r4.restore()
    r4.close()
    with pytest.raises(ValueError, match="codec='snappy' is unknown"):
        ReplayConfig(capacity=400, codec="snappy")


def test_an_lz4_store_has_a_format_name_that_code_before_codecs_refuses(tmp_path):
    before_codecs = ("r2i-replay/3", "r2i-replay/2", "r2i-replay/1")  # what that code reads (as zstd)
    for codec in ("zstd", "lz4"):
        (tmp_path / codec).mkdir()
        r = make_replay(str(tmp_path / codec / "s"), str(tmp_path / codec / "d"), codec=codec)
        fill(r, 0, 20)
        r.commit({})
        r.close()
        fmt = read_latest_manifest(str(tmp_path / codec / "d"))["format"]
        assert (fmt in before_codecs) == (codec == "zstd"), (codec, fmt)
        r2 = make_replay(str(tmp_path / codec / "s2"), str(tmp_path / codec / "d"), token="w2", codec=codec)
        assert r2.restore() is not None and len(r2) == 40
        r2.close()


def test_a_truncated_lz4_frame_is_a_corrupt_chunk():
    codec = ShardCodec(16, 4, 1, "lz4")
    steps = np.arange(16 * 6, dtype=np.float32).reshape(16, 6)
    enc = codec.encode_tail(steps[:5]) + codec.encode_tail(steps[5:])
    out = np.empty_like(steps)
    for cut in (len(enc) - 3, 10):
        with pytest.raises(CorruptChunkError, match="truncated"):
            codec.decode_tail(enc[:cut], out)
    with pytest.raises(CorruptChunkError, match="hold 20 bytes, expected 384"):
        codec.decode_tail(codec.encode_tail(steps[:5].reshape(-1)[:5]), out)


def _corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_new_chunk_falls_back_to_older_manifest(tmp_path):
    """A full restore reads every chunk, so it can fall back; a lazy one finds damage only on use (below)."""
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    fill(r, 0, 40)
    r.commit({"c": 1})
    fill(r, 40, 70)
    r.commit({"c": 2})
    r.close()
    _corrupt(next((d / "chunks" / "1").glob("0000000003-*.bin")))  # shard 3 only exists since commit 2
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2", lazy=False)
    got = r2.restore()
    assert got.extra == {"c": 1} and r2.info["t"] == 40
    assert_batches_equal(r2.read(1, 0, 40), expected(1, 0, 40, 2))
    r2.close()


def test_corrupt_chunk_referenced_by_every_manifest_names_chunk_and_manifest(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    fill(r, 0, 40)
    r.commit({"c": 1})
    fill(r, 40, 70)
    r.commit({"c": 2})
    r.close()
    bad = next((d / "chunks" / "0").glob("0000000000-*.bin"))
    _corrupt(bad)
    lazy = make_replay(str(tmp_path / "s3"), str(d), token="w3", lazy=True, prefetch=0)
    assert lazy.restore().extra == {"c": 2}  # sizes check out: the damage shows when the chunk is read
    with pytest.raises(CorruptChunkError, match=rf"{bad.name}.*manifests/0000000002-"):
        lazy.read(0, 0, 10)
    lazy.close()
    assert not bad.exists()  # quarantined; every manifest references it, so there is nothing to fall back to
    full = make_replay(str(tmp_path / "s2"), str(d), token="w2", lazy=False)
    with pytest.raises(NoRestorableCommitError, match=rf"{bad.name}.*manifests/0000000002-\S+ is missing\. "):
        full.restore()
    full.close()


def test_a_lost_pack_falls_back_to_the_previous_commit(tmp_path):
    # Found by the chaos suite: a commit whose pack vanished (e.g. swept by a newer writer) stopped restore cold.
    schema = {"x": FieldSpec((), "int32")}
    cfg = ReplayConfig(capacity=256, chunk=8, inner=4, prefetch=0, threads=1, fsync=False)
    with Replay(schema, 1, str(tmp_path / "s"), str(tmp_path / "d"), cfg, batch=1, length=2, writer_token="a") as r:
        for n in (5, 10):
            for i in range(5):
                r.add({"x": np.array([i], np.int32)})
            r.commit({"n": n})
    newest = sorted((tmp_path / "d" / "packs").iterdir())[-1]
    newest.unlink()
    with Replay(schema, 1, str(tmp_path / "s2"), str(tmp_path / "d"), cfg, batch=1, length=2,
                writer_token="b") as r:
        assert r.restore().extra == {"n": 5}
        assert r.info["t"] == 5
