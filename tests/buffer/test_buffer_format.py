"""The on-disk format is pinned: golden/store-two-commits holds every object two commits wrote (manifests, pages,
packs, chunk objects; writer.json left out), and the same steps must write the same bytes, and that store must
restore. A change to what the writer emits (a key, its order, a list encoding) fails here before it reaches a
store that older code has to read."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from buffer.integrity import seal
from buffer.records import Manifest, PackEntry, PackRef, PageRef, SamplerState
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step

GOLDEN = Path(__file__).parent / "golden" / "store-two-commits"
W = 2
SETTINGS = {"num_streams": W, "chunk": 8, "inner": 4, "table_page": 2, "capacity": 400, "keep": 10}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "writer.json"}


def test_two_commits_write_the_golden_bytes(tmp_path, monkeypatch):
    # the one wall-clock value in a manifest; everything else is a function of the steps and the settings
    monkeypatch.setattr(time, "time", lambda: 1700000000.25)
    r = make_replay(str(tmp_path / "s"), str(tmp_path / "d"), **SETTINGS)
    for i in range(45):  # shards 0..4 finished (pages [0,2), [2,4)), shard 5 open with one full inner chunk
        r.add(make_step(i, W))
    r.sample()
    r.commit({"step": 45, "note": "x"}, {"params": b"abc", "opt": b"\x00\x01"})
    for i in range(45, 62):  # shard 5 finishes with its first inner chunk in commit 1's pack: a page with heads
        r.add(make_step(i, W))
    r.commit({"step": 62}, {"params": b"def"})
    r.close()
    got, want = files(tmp_path / "d"), files(GOLDEN)
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
    assert [k for k in want if got[k] != want[k]] == []


def test_the_golden_store_restores(tmp_path):
    d = tmp_path / "d"
    shutil.copytree(GOLDEN, d)
    r = make_replay(str(tmp_path / "s"), str(d), token="reader", lazy=False, **SETTINGS)
    got = r.restore()
    assert (got.commit_id, got.extra, got.blobs) == (2, {"step": 62}, {"params": b"def"})
    assert (r.info["t"], r.info["draws"], r.info["k_hi"]) == (62, 1, 7)
    for w in range(W):
        assert_batches_equal(r.read(w, 0, 62), expected(w, 0, 62, W))
    r.close()


def test_records_read_and_write_every_golden_manifest_unchanged():
    """A manifest through Manifest.from_json and back is the same bytes, also one of the format before manifests
    had checksums (its "crc"-less JSON)."""
    bodies = sorted((GOLDEN / "manifests").iterdir()) + sorted((GOLDEN.parent / "store-before-checksums" /
                                                                "manifests").iterdir())
    for path in bodies:
        body = path.read_bytes()
        m = json.loads(body)
        rec = Manifest.from_json(m)
        assert Manifest.from_json(rec.to_json()) == rec, path
        if "crc" in m:
            assert seal(rec.to_json()) == body, path
        else:
            assert json.dumps(rec.to_json(), separators=(",", ":")).encode() == body, path


def test_each_record_is_its_json_value():
    page = PageRef("tables/0000000004-96357e71.json", 590, 2520088177, 4, 6)
    assert page.to_json() == ["tables/0000000004-96357e71.json", 590, 2520088177, 4, 6]
    entry = PackEntry(998, 3, 1772024200)
    assert entry.to_json() == [998, 3, 1772024200]
    pack = PackRef("packs/0000000002-000001.pack", 1001, 4139930234, {"tail/0/x": PackEntry(0, 4, 7),
                                                                     "blob/params": entry})
    assert json.dumps(pack.to_json(), separators=(",", ":")) == (
        '{"key":"packs/0000000002-000001.pack","nbytes":1001,"crc":4139930234,'
        '"entries":{"tail/0/x":[0,4,7],"blob/params":[998,3,1772024200]}}')
    sampler = SamplerState(7, 1, 3, 6, False)
    assert sampler.to_json() == {"seed": 7, "draws": 1, "batch": 3, "length": 6, "force_first": False}
    for rec in (page, entry, pack, sampler):
        assert type(rec).from_json(json.loads(json.dumps(rec.to_json()))) == rec
