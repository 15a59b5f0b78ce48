"""The exactness contract: restore at commit c, then the same calls give byte-identical results."""

from __future__ import annotations

import os
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.buffer.buffer_helpers import assert_batches_equal, make_replay, make_step

OP = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 45)),
    st.tuples(st.just("sample"), st.just(0)),
    st.tuples(st.just("commit"), st.integers(0, 1)),
)


def run_ops(r, ops, start_step: int, outputs: list) -> int:
    """Apply ops; append every observable result to `outputs`; return the next step index."""
    i = start_step
    for op, arg in ops:
        if op == "add":
            for _ in range(arg):
                r.add(make_step(i, r.num_streams))
                i += 1
        elif op == "sample" and (r.info["t"] - r.info["lo"]) >= r.length:
            outputs.append(r.sample())
        elif op == "commit":
            outputs.append(r.commit({"i": i}, {"state": str(i).encode()}, background=bool(arg)))
            r.wait()
        outputs.append(dict(r.info))
    lo, t = r.info["lo"], r.info["t"]
    outputs += [r.read(w, lo, t) for w in range(r.num_streams)]
    return i


def compare(a: list, b: list) -> None:
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict) and x and isinstance(next(iter(x.values())), int):
            assert x == y
        elif isinstance(x, dict):
            assert_batches_equal(x, y)
        else:
            assert x == y


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.lists(OP, max_size=8), after=st.lists(OP, min_size=1, max_size=8),
       lazy=st.booleans(), scratch=st.sampled_from(["wiped", "kept", "corrupted"]),
       prefetch=st.sampled_from([0, 2]), background=st.booleans(), codec=st.sampled_from(["zstd", "lz4"]))
def test_restore_continues_byte_identically(tmp_path_factory, before, after, lazy, scratch, prefetch,
                                            background, codec):
    tmp = tmp_path_factory.mktemp("exact")
    kw = dict(num_streams=2, capacity=2 * 60, chunk=16, inner=4, batch=3, length=6, keep=2, codec=codec)
    a = make_replay(str(tmp / "sa"), str(tmp / "da"), prefetch=2, token="a", **kw)
    scratch_a: list = []
    i = run_ops(a, before, 0, scratch_a)
    c = a.commit({"i": i}, {"state": str(i).encode()}, background=background)
    a.wait()
    info_at_c = dict(a.info)
    shutil.copytree(tmp / "da", tmp / "db")  # the durable store as it was right after commit c
    ref: list = []
    run_ops(a, after, i, ref)
    a.close()

    if scratch == "wiped":
        sb = tmp / "sb"
    else:  # the scratch of a process that went on past c: stale extra shards, maybe damaged ones
        sb = tmp / "sa"
        if scratch == "corrupted":
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sb / "image" / "c") for f in fs)
            if files:
                with open(files[len(files) // 2], "r+b") as fh:
                    fh.seek(5)
                    fh.write(b"\xff\x00\xff")
    b = make_replay(str(sb), str(tmp / "db"), prefetch=prefetch, lazy=lazy, token="b", **kw)
    got = b.restore()
    assert got.commit_id == c and got.extra == {"i": i} and got.blobs == {"state": str(i).encode()}
    assert b.info == info_at_c
    out: list = []
    run_ops(b, after, i, out)
    b.close()
    compare(ref, out)
