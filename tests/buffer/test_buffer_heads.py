"""Segments: each commit writes the open shard's new full inner chunks once, into its pack; the shard's chunk
object, once finished, skips them. Restores join the two, and nothing is written twice but a partial inner chunk."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from buffer import DurableStoreError, NoRestorableCommitError, Replay
from buffer.durable import Durable
from buffer.manifest import chunk_keys, decode_heads, decode_tables, head_file_bytes, head_m, object_keys
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step, read_manifest

W = 2


def fill(r: Replay, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, W))


def manifest(d: Path, commit: int) -> dict:
    (name,) = [n for n in os.listdir(d / "manifests") if n.startswith(f"{commit:010d}-")]
    return read_manifest(d, f"manifests/{name}")


def check_all(r: Replay, stop: int) -> None:
    for w in range(W):
        assert_batches_equal(r.read(w, 0, stop), expected(w, 0, stop, W))


@pytest.mark.parametrize("lazy,codec", [(False, "zstd"), (True, "zstd"), (True, "lz4")])
def test_finished_shard_skips_the_frames_the_last_pack_holds_and_restores_exactly(tmp_path, lazy, codec):
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "sa"), str(d), codec=codec)
    fill(a, 0, 27)  # shard 0 done; shard 1 open with 11 steps: 2 full inner chunks of 4, then 3 steps
    a.commit({})
    fill(a, 27, 40)  # finishes shard 1
    a.commit({})
    m = manifest(d, 2)
    heads = decode_heads(m)
    assert sorted(heads) == [1, 2] and sorted(heads[1]) == [0, 1] and {head_m(h) for h in heads[1].values()} == {2}
    assert {g.pack for h in heads[1].values() for g in h} == {manifest(d, 1)["pack"]["key"]}
    info = decode_tables(m)[1]
    for w, h in heads[1].items():
        (key,) = [k for k in chunk_keys(m) if k.startswith(f"chunks/{w}/0000000001-")]
        assert key.endswith("-h02.bin")
        full = int(info.size[w].sum())
        assert os.path.getsize(d / key) == full - sum(head_file_bytes(h, j) for j in range(6)) < full
    # this commit wrote shard 1 minus 8 steps, then its own tail (8 steps): 16 steps' worth of a shard
    assert a.stats["last_commit_chunk_bytes"] < int(info.size.sum())
    a.close()

    shutil.rmtree(tmp_path / "sa")  # a new node: every shard comes from durable
    b = make_replay(str(tmp_path / "sb"), str(d), token="b", lazy=lazy, codec=codec)
    assert b.restore().commit_id == 2
    check_all(b, 40)
    fill(b, 40, 58)  # a head again (shard 2 open at commit 2), and one made by this writer
    b.commit({})
    b.close()
    c = make_replay(str(tmp_path / "sc"), str(d), token="c", lazy=lazy, codec=codec)
    assert c.restore().commit_id == 3
    check_all(c, 58)
    for i in range(3):  # the sampler's batches too
        batch = c.sample()
        assert batch["image"].shape == (3, 6, 6, 6, 3), i
    c.close()


def test_a_pack_stays_while_a_kept_shard_starts_in_it_and_goes_with_the_shard(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d), keep=1, capacity=2 * 48)
    fill(r, 0, 27)
    r.commit({})
    p1 = manifest(d, 1)["pack"]["key"]
    fill(r, 27, 40)
    r.commit({})  # shard 1 starts in pack 1; manifest 1 is dropped (keep=1), its pack is not
    assert os.listdir(d / "manifests") == [f"{2:010d}-000001.json"] and (d / p1).exists()
    assert p1 in object_keys(manifest(d, 2))
    fill(r, 40, 90)  # the window (48 steps a stream) moves past shard 1
    r.commit({})
    assert not (d / p1).exists()
    live = set(object_keys(manifest(d, 3))) | {manifest(d, 3)["pack"]["key"]}
    on_disk = {f"{top}/{p.relative_to(d / top)}" for top in ("chunks", "packs", "tables") for p in (d / top).rglob("*")
               if p.is_file()}
    assert on_disk == live
    r.close()
    shutil.rmtree(tmp_path / "s")
    s = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    assert s.restore().commit_id == 3
    lo = s.info["lo"]
    for w in range(W):
        assert_batches_equal(s.read(w, lo, 90), expected(w, lo, 90, W))
    s.close()


def _three_commits(tmp_path: Path) -> Path:
    """Commit 1 at 20 (shard 0 whole), 2 at 27 (shard 1 open), 3 at 40 (shard 1 done, its head in pack 2)."""
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))
    for c, stop in enumerate((20, 27, 40), 1):
        fill(r, r.info["t"], stop)
        assert r.commit({"at": stop}) == c
    r.close()
    shutil.rmtree(tmp_path / "s")
    # shard 1's first inner chunk is in pack 1 (commit 1 saw 4 steps of it), the second in pack 2
    assert [g.pack for g in decode_heads(manifest(d, 3))[1][0]] == [manifest(d, c)["pack"]["key"] for c in (1, 2)]
    return d


def _flip(p: Path, off: int) -> None:
    data = bytearray(p.read_bytes())
    data[off] ^= 0xFF
    p.write_bytes(bytes(data))


def test_a_damaged_segment_quarantines_its_pack_and_falls_back_past_every_commit_using_it(tmp_path):
    d = _three_commits(tmp_path)
    g = decode_heads(manifest(d, 3))[1][0][1]  # in pack 2
    _flip(d / g.pack, g.off + 3)
    r = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    # commit 3 needs pack 2 for shard 1, commit 2 for its tails: commit 1 is the newest whole one
    assert r.restore().extra == {"at": 20}
    check_all(r, 20)
    quarantined = [p.name for p in (d / "quarantine" / "packs").iterdir()]
    assert any(q.startswith(Path(g.pack).name) and not q.endswith(".json") for q in quarantined)
    record = json.loads(next((d / "quarantine" / "packs").glob("*.json")).read_text())
    assert record["key"] == g.pack and record["shard"] == 1
    r.close()


def test_a_damaged_rest_of_a_headed_shard_is_named_and_quarantined_alone(tmp_path):
    d = _three_commits(tmp_path)
    (key,) = [k for k in chunk_keys(manifest(d, 3)) if k.startswith("chunks/1/0000000001-")]
    _flip(d / key, 1)
    r = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    assert r.restore().extra == {"at": 27}  # commit 2 held shard 1 as a tail: its pack is intact
    check_all(r, 27)
    assert [p.name.split(".bin")[0] for p in (d / "quarantine" / "chunks" / "1").iterdir()
            if not p.name.endswith(".json")] == [Path(key).name.split(".bin")[0]]
    r.close()


def test_a_missing_head_pack_makes_its_commits_unrestorable_with_a_clear_error(tmp_path):
    d = _three_commits(tmp_path)
    os.remove(d / manifest(d, 2)["pack"]["key"])
    os.remove(d / manifest(d, 1)["pack"]["key"])
    r = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    with pytest.raises(NoRestorableCommitError, match=r"packs/000000000[12]-000001\.pack"):
        r.restore()
    r.close()


def test_commits_inside_one_shard_write_each_inner_chunk_once(tmp_path):
    """Commits every 5 steps (a shard is 16, an inner chunk 4): each pack holds only the inner chunks finished
    since the last commit, the finished shard's object only the rest, and every commit restores exactly."""
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d), keep=20)
    stops = list(range(5, 61, 5))
    for c, stop in enumerate(stops, 1):
        fill(r, r.info["t"], stop)
        assert r.commit({"at": stop}) == c
    r.close()
    for c, stop in enumerate(stops, 1):
        m = manifest(d, c)
        n_open = stop % 16 // 4
        segs = decode_heads(m).get(m["k_hi"], {})
        assert all(head_m(h) == n_open for h in segs.values()) and (len(segs) == 2 if n_open else not segs)
        for h in segs.values():  # one segment per commit that finished an inner chunk of the open shard
            assert len({g.pack for g in h}) == len(h)
    # every shard finished at a commit that had seen 3 of its inner chunks: its object holds only the last one
    keys = chunk_keys(manifest(d, len(stops)))
    assert len(keys) == 3 * W and all(key.endswith("-h03.bin") for key in keys), keys
    for c, stop in [(3, 15), (4, 20), (7, 35), (12, 60)]:
        shutil.rmtree(tmp_path / "s2", ignore_errors=True)
        dc = tmp_path / f"d{c}"
        shutil.copytree(d, dc)
        for later in range(c + 1, len(stops) + 1):
            os.remove(dc / "manifests" / f"{later:010d}-000001.json")
        q = make_replay(str(tmp_path / "s2"), str(dc), token=f"q{c}", lazy=bool(c % 2))
        assert q.restore().extra == {"at": stop}
        check_all(q, stop)
        fill(q, stop, stop + 9)  # and goes on from there exactly
        q.commit({})
        check_all(q, stop + 9)
        q.close()


def test_a_segment_read_that_fails_is_an_error_and_quarantines_nothing(tmp_path, monkeypatch):
    """Only damage at rest quarantines a pack; an I/O error of the store (a network blip) is raised as such."""
    d = _three_commits(tmp_path)

    def broken(self, key, start, end):
        raise DurableStoreError(f"reading {key}: simulated") from OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Durable, "get_range", broken)
    r = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    with pytest.raises(DurableStoreError, match="simulated"):
        r.restore()
    r.close()
    assert not (d / "quarantine").exists()
    monkeypatch.undo()
    r = make_replay(str(tmp_path / "s3"), str(d), token="c", lazy=False)
    assert r.restore().extra == {"at": 40}
    check_all(r, 40)
    r.close()
