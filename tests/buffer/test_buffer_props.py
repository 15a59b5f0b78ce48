"""Property tests: FIFO window against a plain model, sampling plans, codec round trips, stray files."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.codec import ShardCodec
from buffer.sampling import plan_batch
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams=st.integers(1, 3), inner=st.sampled_from([2, 4, 8]), shards=st.integers(1, 3),
       cap=st.integers(6, 70), adds=st.lists(st.integers(0, 30), min_size=1, max_size=5))
def test_window_matches_a_list_model(tmp_path_factory, streams, inner, shards, cap, adds):
    tmp = tmp_path_factory.mktemp("window")
    r = make_replay(str(tmp / "s"), str(tmp / "d"), num_streams=streams, chunk=inner * shards, inner=inner,
                    capacity=cap * streams, length=6)
    t = 0
    for n in adds:
        for _ in range(n):
            r.add(make_step(t, streams))
            t += 1
        lo = max(0, t - cap)
        assert r.info["t"] == t and r.info["lo"] == lo and len(r) == (t - lo) * streams
        for w in range(streams if t > lo else 0):
            assert_batches_equal(r.read(w, lo, t), expected(w, lo, t, streams))
    # scratch holds only shards that still overlap the window (nothing preallocated, evicted ones deleted)
    chunk = inner * shards
    on_disk = {int(p.split(os.sep)[-4]) for p in _files(tmp / "s" / "image" / "c")}
    assert on_disk <= set(range(max(0, t - cap) // chunk, t // chunk)), (on_disk, t, cap)
    r.close()


def _files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


@given(seed=st.integers(-2**63, 2**63 - 1), n=st.integers(0, 2**40), batch=st.integers(1, 64),
       length=st.integers(1, 100), streams=st.integers(1, 16), lo=st.integers(0, 10**9),
       extra=st.integers(0, 10**6))
def test_plan_batch_is_pure_and_in_range(seed, n, batch, length, streams, lo, extra):
    t = lo + length + extra
    ws, starts = plan_batch(seed, n, batch, length, streams, t, lo)
    ws2, starts2 = plan_batch(seed, n, batch, length, streams, t, lo)
    assert ws.shape == starts.shape == (batch,)
    assert (ws >= 0).all() and (ws < streams).all()
    assert (starts >= lo).all() and (starts + length <= t).all()
    assert np.array_equal(ws, ws2) and np.array_equal(starts, starts2)


@given(chunk_mult=st.integers(1, 4), inner=st.sampled_from([1, 3, 8]), level=st.sampled_from([1, 3]),
       shape=st.sampled_from([(), (2,), (3, 2)]), dtype=st.sampled_from(["uint8", "float32", "bool", "int64"]),
       name=st.sampled_from(["zstd", "lz4"]), data=st.data())
def test_shard_codec_round_trip(chunk_mult, inner, level, shape, dtype, name, data):
    codec = ShardCodec(inner * chunk_mult, inner, level, name)
    seed = data.draw(st.integers(0, 2**32 - 1))
    arr = (np.random.default_rng(seed).integers(0, 3, (codec.chunk, *shape)) > 0).astype(dtype)
    enc = codec.encode(arr)
    index = codec.parse_index(enc[-codec.index_nbytes():], "test")
    out = np.empty_like(arr)
    for j, (off, nbytes) in enumerate(index.tolist()):
        codec.decode_inner(enc[off:off + nbytes], out[j * inner:(j + 1) * inner], "test")
    assert out.tobytes() == arr.tobytes()
    # a tail made of several frames (a pack's segment, then the steps after it) decodes in sequence
    cut = data.draw(st.integers(0, codec.chunk))
    tail = np.empty_like(arr)
    codec.decode_tail(codec.encode_tail(arr[:cut]) + codec.encode_tail(arr[cut:]), tail)
    assert tail.tobytes() == arr.tobytes()


def test_stray_files_of_a_killed_writer_are_swept_on_restore(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    for i in range(40):
        r.add(make_step(i, 2))
    r.commit({"ok": 1})
    r.close()
    strays = [d / "manifests" / "0000000002-000001.json.tmp-deadbeef", d / "chunks" / "0" / "0000000002-0badf00d.bin",
              d / "packs" / "0000000002-000001.pack"]
    for p in strays:
        p.write_bytes(b"torn")
    r2 = make_replay(str(tmp_path / "s"), str(d), token="w2")
    assert r2.restore().extra == {"ok": 1}
    assert not any(p.exists() for p in strays)
    r2.close()


def test_missing_durable_chunk_falls_back_or_names_it(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    for i in range(70):
        r.add(make_step(i, 2))
        if i in (39, 69):
            r.commit({"i": i})
    r.close()
    next((d / "chunks" / "1").glob("0000000003-*.bin")).unlink()  # only the newest commit has shard 3
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2")
    assert r2.restore().extra == {"i": 39}
    r2.close()
