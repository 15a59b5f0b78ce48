"""Faults of the durable tier: a corrupt chunk found by a lazy restore, GC around it, and the writer fence."""

from __future__ import annotations

import json
import os

import pytest

from buffer import CorruptChunkError, NoRestorableCommitError, Replay, WriterFencedError
from buffer.chunks import Chunks
from buffer.durable import Durable
from buffer.manifest import chunk_keys
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step, read_manifest

KW = dict(capacity=2 * 200, chunk=16, inner=4, batch=3, length=6)


def fill(r: Replay, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, r.num_streams))


def manifests(d) -> list[str]:
    return sorted(os.listdir(d / "manifests"))


def two_commits(tmp_path, keep: int = 3) -> tuple[dict, dict]:
    """Commit 1 at step 40 (shards 0-1 finished), commit 2 at step 70 (shards 2-3); info after each."""
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), keep=keep, token="w1", **KW)
    assert r.restore() is None
    fill(r, 0, 40)
    r.sample()
    r.commit({"i": 40}, {"state": b"40"})
    info1 = dict(r.info)
    fill(r, 40, 70)
    r.sample()
    r.commit({"i": 70}, {"state": b"70"})
    info2 = dict(r.info)
    r.close()
    return info1, info2


def corrupt_in_place(path) -> bytes:
    """Flip one byte in the middle, size unchanged (only a checksum can tell); the original bytes."""
    data = path.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    return data


def no_lazy_thread(monkeypatch) -> None:
    """Only the sampler fetches (a slow background fetch): which call finds the damage is then deterministic."""
    monkeypatch.setattr(Chunks, "_lazy_fetch", lambda self: None)


def test_lazily_found_corrupt_chunk_is_quarantined_and_restore_falls_back_exactly(tmp_path, monkeypatch):
    d = tmp_path / "d"
    info1, _ = two_commits(tmp_path)
    (bad,) = (d / "chunks" / "1").glob("0000000003-*.bin")  # shard 3 of stream 1: only commit 2 has it
    original = corrupt_in_place(bad)
    damaged = bad.read_bytes()
    no_lazy_thread(monkeypatch)
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2", **KW)
    assert r2.restore().commit_id == 2
    with pytest.raises(CorruptChunkError) as err:
        for _ in range(200):
            r2.sample()
    key, mkey = f"chunks/1/{bad.name}", "manifests/0000000002-000001.json"
    assert (err.value.key, err.value.manifest) == (key, mkey)
    assert key in str(err.value) and mkey in str(err.value)
    # moved out of the way with its record, bytes kept; the replay refuses to go on (its commits would need it)
    assert not bad.exists()
    q = sorted(p.name for p in (d / "quarantine" / "chunks" / "1").iterdir())
    assert len(q) == 2 and q[0].startswith(bad.name + ".") and q[1] == q[0] + ".json", q
    assert (d / "quarantine" / "chunks" / "1" / q[0]).read_bytes() == damaged
    record = json.loads((d / "quarantine" / "chunks" / "1" / q[1]).read_text())
    assert (record["key"], record["manifest"], record["writer"]) == (key, mkey, "w2")
    with pytest.raises(CorruptChunkError, match=bad.name):
        r2.add(make_step(70, 2))
    r2.close()
    monkeypatch.undo()

    r3 = make_replay(str(tmp_path / "s2"), str(d), token="w3", **KW)
    got = r3.restore()
    assert (got.commit_id, got.extra, got.blobs) == (1, {"i": 40}, {"state": b"40"})
    assert r3.info == info1
    ref = make_replay(str(tmp_path / "sr"), str(tmp_path / "dr"), token="ref", **KW)
    fill(ref, 0, 40)
    ref.sample()
    ref.commit({"i": 40}, {"state": b"40"})
    for r in (r3, ref):  # the same calls after the fallback as after commit 1 of an uninterrupted writer
        r.outputs = []
        for a, b in ((40, 70), (70, 95)):
            fill(r, a, b)
            r.outputs += [r.sample(), r.sample()]
            r.outputs.append(r.commit({"i": b}, {"state": str(b).encode()}))
            r.outputs.append({k: v for k, v in r.info.items() if k != "commit"})
    assert r3.outputs[2::4] == [3, 4] and ref.outputs[2::4] == [2, 3]
    assert r3.outputs[3::4] == ref.outputs[3::4]
    for a, b in zip(r3.outputs[0::4] + r3.outputs[1::4], ref.outputs[0::4] + ref.outputs[1::4], strict=True):
        assert_batches_equal(a, b)
    r3.close()
    ref.close()
    # the regenerated shard is written afresh under its (content-derived) key; the quarantined bytes stay put
    assert bad.read_bytes() == original
    assert (d / "quarantine" / "chunks" / "1" / q[0]).read_bytes() == damaged
    r4 = make_replay(str(tmp_path / "s4"), str(d), token="w4", lazy=False, **KW)
    got = r4.restore()
    assert (got.commit_id, got.extra, r4.info["t"]) == (4, {"i": 95}, 95)
    for w in range(2):
        assert_batches_equal(r4.read(w, 0, 95), expected(w, 0, 95, 2))
    r4.close()


def test_gc_keeps_the_fallback_while_unverified_and_does_not_count_unrestorable_commits(tmp_path, monkeypatch):
    d = tmp_path / "d"
    two_commits(tmp_path, keep=2)
    (bad,) = (d / "chunks" / "0").glob("0000000003-*.bin")
    corrupt_in_place(bad)
    no_lazy_thread(monkeypatch)
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2", keep=2, **KW)
    assert r2.restore().commit_id == 2
    fill(r2, 70, 100)
    r2.commit({"i": 100})
    fill(r2, 100, 130)
    r2.commit({"i": 130})
    # keep=2, but commits 1 and 2 stay until the restored chunks are verified: all four reference shard 3
    assert manifests(d) == ["0000000001-000001.json", "0000000002-000001.json", "0000000003-000002.json",
                            "0000000004-000002.json"]
    with pytest.raises(CorruptChunkError, match=bad.name):
        r2.read(0, 48, 64)
    r2.close()
    monkeypatch.undo()

    r3 = make_replay(str(tmp_path / "s3"), str(d), token="w3", keep=2, **KW)
    got = r3.restore()
    assert (got.commit_id, got.extra, r3.info["t"]) == (1, {"i": 40}, 40)
    r3._lazy_thread.join()
    assert r3.commit({"i": 40}) == 5
    # 5 and 1 are the two restorable commits; 2-4 need the quarantined chunk and do not count towards keep
    assert len(manifests(d)) == 5
    fill(r3, 40, 70)  # finishes shard 3 again: the next commit writes it back, 2-4 are whole again
    assert r3.commit({"i": 70}) == 6
    assert manifests(d) == ["0000000005-000003.json", "0000000006-000003.json"]
    live = set()
    for m in manifests(d):
        live |= set(chunk_keys(read_manifest(d, f"manifests/{m}")))
    on_disk = {f"chunks/{w}/{n}" for w in os.listdir(d / "chunks") for n in os.listdir(d / "chunks" / w)}
    assert on_disk == live
    for w in range(2):
        assert_batches_equal(r3.read(w, 0, 70), expected(w, 0, 70, 2))
    r3.close()


def test_a_failure_of_the_lazy_fetch_thread_reaches_the_caller(tmp_path, monkeypatch):
    d = tmp_path / "d"
    two_commits(tmp_path)
    (bad,) = (d / "chunks" / "0").glob("0000000003-*.bin")
    corrupt_in_place(bad)
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2", **KW)
    r2.restore()
    r2._lazy_thread.join()
    with pytest.raises(CorruptChunkError, match=rf"{bad.name}.*manifests/0000000002-000001.json"):
        r2.add(make_step(70, 2))
    r2.close()
    assert not bad.exists()

    def boom(self, w, k, info):
        raise RuntimeError(f"no route to shard {k}")

    monkeypatch.setattr(Chunks, "_materialize", boom)
    r3 = make_replay(str(tmp_path / "s3"), str(d), token="w3", **KW)
    assert r3.restore().commit_id == 1
    r3._lazy_thread.join()
    with pytest.raises(RuntimeError, match="no route to shard 1"):  # not a ReplayError: still not swallowed
        r3.add(make_step(40, 2))  # add reads nothing: only the thread's failure can make it raise
    r3.close()


def test_a_full_restore_quarantines_every_corrupt_chunk_it_reads_and_falls_back_usable(tmp_path):
    d = tmp_path / "d"
    info1, _ = two_commits(tmp_path)
    bad = [next((d / "chunks" / str(w)).glob("0000000003-*.bin")) for w in (0, 1)]
    for p in bad:
        corrupt_in_place(p)
    r = make_replay(str(tmp_path / "s2"), str(d), token="w2", lazy=False, **KW)
    got = r.restore()
    assert (got.commit_id, r.info) == (1, info1)
    assert not any(p.exists() for p in bad)
    assert sorted(len(os.listdir(d / "quarantine" / "chunks" / str(w))) for w in (0, 1)) == [2, 2]
    fill(r, 40, 50)  # the failed fetches of commit 2 left no error behind for the fallback
    assert_batches_equal(r.read(0, 0, 50), expected(0, 0, 50, 2))
    r.close()



def test_a_full_restore_that_finds_no_fallback_raises_a_final_error_and_keeps_every_commit(tmp_path):
    d = tmp_path / "d"
    two_commits(tmp_path)
    (bad,) = (d / "chunks" / "0").glob("0000000000-*.bin")  # shard 0 of stream 0: in both commits
    corrupt_in_place(bad)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p != bad}
    r = make_replay(str(tmp_path / "s3"), str(d), token="w3", lazy=False, **KW)
    with pytest.raises(NoRestorableCommitError, match="none of the 2 commits") as err:
        r.restore()
    r.close()
    # final, not a CorruptChunkError: the job must not requeue for a fallback that does not exist
    assert not isinstance(err.value, CorruptChunkError) and err.value.__cause__ is None
    assert err.value.keys == (f"chunks/0/{bad.name}",) and bad.name in str(err.value)
    assert "quarantine" in str(err.value)
    # nothing committed was touched (the damaged chunk only moved to quarantine/; each opener takes the token)
    changed = sorted(str(p.relative_to(d)) for p, b in before.items() if not p.exists() or p.read_bytes() != b)
    assert changed == ["writer.json"], changed
    assert len(os.listdir(d / "manifests")) == 2


# --- writer fence ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["path", "memory"])
def test_publish_is_write_once_and_checks_after_the_bytes_are_written(tmp_path, scheme):
    url = str(tmp_path / "d") if scheme == "path" else f"memory://{tmp_path.name}/d"
    d = Durable(url)
    seen = []
    d.publish("manifests/0000000001-000001.json", b"first", check=lambda: seen.append(
        sorted(os.listdir(tmp_path / "d" / "manifests")) if scheme == "path" else "checked"))
    if scheme == "path":  # the check runs when only the flushed temporary file exists
        assert len(seen[0]) == 1 and seen[0][0].startswith("0000000001-000001.json.tmp-"), seen
    with pytest.raises(FileExistsError):
        d.publish("manifests/0000000001-000001.json", b"second", check=lambda: None)
    assert d.get("manifests/0000000001-000001.json") == b"first"
    assert [k for _, _, k in d.manifests()] == ["manifests/0000000001-000001.json"] and not d.stray_manifest_files()

    def fenced():
        raise WriterFencedError("fenced")

    with pytest.raises(WriterFencedError):
        d.publish("manifests/0000000002-000001.json", b"x", check=fenced)
    assert [k for _, _, k in d.manifests()] == ["manifests/0000000001-000001.json"] and not d.stray_manifest_files()


def test_a_commit_never_replaces_a_published_manifest(tmp_path):
    # what two writers that raced to the same generation would do to each other (take_over is read-then-write)
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "sa"), str(d), token="a", **KW)
    fill(a, 0, 20)
    a.commit({"n": 1})
    (d / "manifests" / "0000000002-000001.json").write_bytes(b"the other writer's commit 2")
    with pytest.raises(WriterFencedError, match="0000000002-000001.json already exists"):
        a.commit({"n": 2})
    assert (d / "manifests" / "0000000002-000001.json").read_bytes() == b"the other writer's commit 2"
    a.close()


def test_a_take_over_during_the_publish_fences_the_writer_before_its_gc(tmp_path):
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "sa"), str(d), token="a", keep=1, **KW)
    fill(a, 0, 20)
    a.commit({"n": 1})
    publish = a._durable.publish

    def publish_then_lose_the_token(key, data, check):
        publish(key, data, check)
        Durable(str(d)).take_over("b")

    a._durable.publish = publish_then_lose_the_token
    fill(a, 20, 40)
    with pytest.raises(WriterFencedError, match="commit 2 was published as manifests/0000000002-000001.json.*"
                                                "no garbage collected"):
        a.commit({"n": 2})
    assert manifests(d) == ["0000000001-000001.json", "0000000002-000001.json"]  # keep=1, yet nothing dropped
    a.close()


def test_restore_skips_a_manifest_whose_chunk_vanished_after_listing(tmp_path, monkeypatch):
    # another copy of the job quarantined it after our restore listed the store: same error, same key
    d = tmp_path / "d"
    two_commits(tmp_path)
    (gone,) = (d / "chunks" / "1").glob("0000000002-*.bin")
    no_lazy_thread(monkeypatch)
    r2 = make_replay(str(tmp_path / "s2"), str(d), token="w2", **KW)
    assert r2.restore().commit_id == 2
    gone.unlink()
    with pytest.raises(CorruptChunkError, match=rf"{gone.name}.*missing") as err:
        r2.read(1, 30, 40)
    assert err.value.key == f"chunks/1/{gone.name}"
    r2.close()
