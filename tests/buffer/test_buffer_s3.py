"""The buffer's durable contract over s3:// against a real S3 protocol server (moto, started by conftest.py):
exact and lazy restore, GC, the writer fence with the create-only publish, a corrupt object, bad URLs."""

from __future__ import annotations

import json

import pytest

from buffer import CorruptChunkError, DurableStoreError, WriterFencedError
from buffer.durable import Durable
from buffer.manifest import load_pages, object_keys
from buffer.objstore import S3Objects
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step
from tests.buffer.test_buffer_exact import compare, run_ops
from tests.buffer.test_buffer_lock import Holder

KW = dict(capacity=2 * 200, chunk=16, inner=4, batch=3, length=6)
BEFORE = [("add", 45), ("sample", 0), ("commit", 0), ("add", 30), ("sample", 0), ("commit", 1), ("add", 7)]
AFTER = [("add", 20), ("sample", 0), ("sample", 0), ("commit", 0), ("add", 33), ("sample", 0), ("commit", 1)]


def objects(d: Durable, prefix: str) -> dict[str, bytes]:
    return {k: d.get(k) for k in d.list_sizes(prefix)}


def manifest_names(d: Durable) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for _, _, k in d.manifests())


def fill(r, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, r.num_streams))


@pytest.mark.parametrize("lazy", [True, False])
def test_restore_from_s3_continues_byte_identically_and_stores_the_same_bytes(tmp_path, s3_url, lazy):
    # reference: one uninterrupted writer on a local folder
    ref = make_replay(str(tmp_path / "sr"), str(tmp_path / "dr"), token="ref", **KW)
    out_ref: list = []
    i = run_ops(ref, BEFORE, 0, out_ref)
    c = ref.commit({"i": i}, {"state": str(i).encode()})
    info_at_c = dict(ref.info)
    run_ops(ref, AFTER, i, out_ref)
    ref.close()

    a = make_replay(str(tmp_path / "sa"), s3_url, token="a", **KW)
    out_a: list = []
    assert run_ops(a, BEFORE, 0, out_a) == i
    assert a.commit({"i": i}, {"state": str(i).encode()}) == c
    a.close()
    s3, local = Durable(s3_url), Durable(str(tmp_path / "dr"), create=False)
    # the chunks and pages of commit c went up byte for byte (manifests differ only in their time stamps)
    got = {**objects(s3, "chunks"), **objects(s3, "tables")}
    assert got and all(local.get(k) == v for k, v in got.items())

    b = make_replay(str(tmp_path / "sb"), s3_url, token="b", lazy=lazy, **KW)
    r = b.restore()
    assert (r.commit_id, r.extra, r.blobs) == (c, {"i": i}, {"state": str(i).encode()})
    assert b.info == info_at_c
    out_b: list = []
    run_ops(b, AFTER, i, out_b)
    b.close()
    compare(out_ref[:len(out_a)], out_a)  # the writer on s3 saw what the one on a folder saw
    compare(out_ref[len(out_a):], out_b)


def test_gc_on_s3_deletes_every_object_no_kept_manifest_references(tmp_path, s3_url):
    kw = {**KW, "capacity": 2 * 64}  # 4 shards a stream: the oldest are evicted, their objects unreferenced
    r = make_replay(str(tmp_path / "s"), s3_url, token="w", keep=2, **kw)
    for n, (a, b) in enumerate(((0, 40), (40, 70), (70, 100), (100, 130)), 1):
        fill(r, a, b)
        assert r.commit({"i": b}) == n
    r.close()
    d = Durable(s3_url)
    assert manifest_names(d) == ["0000000003-000001.json", "0000000004-000001.json"]
    live = set()
    for _, _, mkey in d.manifests():
        m = load_pages(d, d.read_json(mkey), mkey)
        live |= {*object_keys(m), m["pack"]["key"]}
    stored = {**d.list_sizes("chunks"), **d.list_sizes("packs"), **d.list_sizes("tables")}
    assert set(stored) == live
    assert not [k for k in stored if k.startswith(("chunks/0/0000000000-", "chunks/1/0000000000-"))]
    again = make_replay(str(tmp_path / "s2"), s3_url, token="w2", lazy=False, **kw)
    assert again.restore().extra == {"i": 130}
    lo = again.info["lo"]
    assert lo > 0
    for w in range(2):
        assert_batches_equal(again.read(w, lo, 130), expected(w, lo, 130, 2))
    again.close()


def test_publish_on_s3_is_create_only_and_checks_first(s3_url):
    d = Durable(s3_url)
    order = []
    d.publish("manifests/0000000001-000001.json", b"first", check=lambda: order.append(d.exists(
        "manifests/0000000001-000001.json")))
    assert order == [False]  # the fence is checked before the object exists
    with pytest.raises(FileExistsError):  # the server refused the PUT (If-None-Match: *)
        d.publish("manifests/0000000001-000001.json", b"second", check=lambda: None)
    assert d.get("manifests/0000000001-000001.json") == b"first"

    def fenced():
        raise WriterFencedError("fenced")

    with pytest.raises(WriterFencedError):
        d.publish("manifests/0000000002-000001.json", b"x", check=fenced)
    assert [k for _, _, k in d.manifests()] == ["manifests/0000000001-000001.json"]


def test_a_store_that_ignores_if_none_match_is_found_at_open_and_publish_looks_first(s3_url, monkeypatch,
                                                                                       caplog):
    put = S3Objects.pipe_file
    monkeypatch.setattr(S3Objects, "pipe_file", lambda self, path, data, mode="overwrite": put(self, path, data))
    d = Durable(s3_url)
    assert not d.exclusive and "does not refuse a create-only PUT" in caplog.text
    d.publish("manifests/0000000001-000001.json", b"first", check=lambda: None)
    with pytest.raises(FileExistsError):
        d.publish("manifests/0000000001-000001.json", b"second", check=lambda: None)
    assert d.get("manifests/0000000001-000001.json") == b"first"
    assert d.list_sizes("") == {"manifests/0000000001-000001.json": 5}  # the probe object is gone
    monkeypatch.undo()
    assert Durable(s3_url).exclusive


def test_a_second_writer_process_fences_the_first_on_s3(tmp_path, s3_url):
    first = Holder(tmp_path / "s1", s3_url, "first")  # a process of its own: restores, adds 40, commits
    second = make_replay(str(tmp_path / "s2"), s3_url, token="second", **KW)
    assert second.restore().extra == {"i": 40}
    fill(second, 40, 75)
    assert second.commit({"i": 75}) == 2
    reply = first.ask()
    assert reply.startswith("fenced writer 'first' (generation 1) was fenced by 'second'"), reply
    d = Durable(s3_url)
    assert manifest_names(d) == ["0000000001-000001.json", "0000000002-000002.json"]
    # a writer that raced to the same generation: its manifest name is taken, the PUT is refused, nothing replaced
    d.put("manifests/0000000003-000002.json", b"the other writer's commit 3")
    fill(second, 75, 90)
    with pytest.raises(WriterFencedError, match="0000000003-000002.json already exists"):
        second.commit({"i": 90})
    assert d.get("manifests/0000000003-000002.json") == b"the other writer's commit 3"
    second.close()
    assert first.close() == "closed"


@pytest.mark.parametrize("lazy", [False, True])
def test_a_corrupt_object_on_s3_is_quarantined_and_restore_falls_back(tmp_path, s3_url, lazy):
    r = make_replay(str(tmp_path / "s"), s3_url, token="w1", **KW)
    fill(r, 0, 40)
    r.commit({"i": 40}, {"state": b"40"})
    info1 = dict(r.info)
    fill(r, 40, 70)
    r.commit({"i": 70}, {"state": b"70"})
    r.close()
    d = Durable(s3_url)
    (bad,) = [k for k in d.list_sizes("chunks/1") if k.startswith("chunks/1/0000000003-")]  # only commit 2's
    data = bytearray(d.get(bad))
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    d.put(bad, bytes(data))
    if lazy:  # restore trusts sizes; the background fetch finds the damage and the next call reports it
        r1 = make_replay(str(tmp_path / "s1"), s3_url, token="w1b", **KW)
        assert r1.restore().commit_id == 2
        r1._lazy_thread.join()
        with pytest.raises(CorruptChunkError, match=rf"{bad}.*manifests/0000000002-000001.json"):
            r1.add(make_step(70, 2))
        r1.close()
    r2 = make_replay(str(tmp_path / "s2"), s3_url, token="w2", lazy=False, **KW)
    got = r2.restore()
    assert (got.commit_id, got.extra, got.blobs, r2.info) == (1, {"i": 40}, {"state": b"40"}, info1)
    assert not d.exists(bad)
    q = sorted(d.list_sizes("quarantine"))
    assert len(q) == 2 and q[0].startswith(f"quarantine/{bad}.") and q[1] == q[0] + ".json", q
    assert d.get(q[0]) == bytes(data)
    record = json.loads(d.get(q[1]))
    assert (record["key"], record["manifest"]) == (bad, "manifests/0000000002-000001.json")
    fill(r2, 40, 70)
    assert r2.commit({"i": 70}) == 3
    for w in range(2):
        assert_batches_equal(r2.read(w, 0, 70), expected(w, 0, 70, 2))
    r2.close()


def test_bad_s3_urls_fail_at_open_with_one_line_naming_the_fault(tmp_path, s3_endpoint, monkeypatch):
    with pytest.raises(DurableStoreError, match="bucket 'no-such-bucket' does not exist at http://127.0.0.1:") as e:
        make_replay(str(tmp_path / "s"), "s3://no-such-bucket/run", token="w", **KW)
    assert "\n" not in str(e.value)
    with pytest.raises(DurableStoreError, match="no bucket in the URL"):
        Durable("s3:///run")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(DurableStoreError, match="no S3 credentials") as e:  # half of them
        Durable("s3://r2i-test/run")
    assert "\n" not in str(e.value)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DurableStoreError, match="no S3 credentials") as e:
        Durable("s3://r2i-test/run")
    assert "\n" not in str(e.value)
