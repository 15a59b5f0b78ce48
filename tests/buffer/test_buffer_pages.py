"""Pages: the rows of finished shards are written once, in pages of `table_page` shards, and manifests list the
pages instead of repeating the rows, so that a manifest (and with it a commit) does not grow with the buffer."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from buffer import NoRestorableCommitError, Replay
from buffer.manifest import READABLE, object_keys
from orchestrator.verify import fingerprint
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step, read_manifest

W, CHUNK = 2, 16


def fill(r: Replay, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, W))


def manifests(d: Path) -> list[str]:
    return sorted(f"manifests/{n}" for n in os.listdir(d / "manifests"))


def raw(d: Path, key: str) -> dict:
    return json.loads((d / key).read_text())


def pages_on_disk(d: Path) -> dict[str, int]:
    """page key -> inode: a page rewritten in place or replaced would change it."""
    return {f"tables/{n}": os.stat(d / "tables" / n).st_ino for n in os.listdir(d / "tables")} \
        if (d / "tables").exists() else {}


def test_manifests_stay_small_and_each_page_is_written_once(tmp_path):
    """40 shards a stream, a commit after each, the window 30 shards: with pages of 4 shards a manifest holds at
    most 4 shards' rows plus one small reference per page; with rows inline (one page larger than the buffer)
    it grows by a shard's rows per commit."""
    sizes = {}
    for page in (4, 10**6):
        d = tmp_path / f"d{page}"
        r = make_replay(str(tmp_path / f"s{page}"), str(d), capacity=W * 30 * CHUNK, keep=2, table_page=page)
        seen, sizes[page] = {}, []
        for c in range(40):
            fill(r, c * CHUNK + (c > 0) * 5, (c + 1) * CHUNK + 5)  # the open shard holds 5 steps at each commit
            r.commit({"c": c})
            key = manifests(d)[-1]
            m = raw(d, key)
            sizes[page].append(r.stats["last_commit_manifest_bytes"])
            assert m["k_hi"] == c + 1 and len(m["pages"]) == (c + 1) // page - m["k_lo"] // page
            assert m["rows_lo"] == max(m["k_lo"], (c + 1) // page * page)
            # what the writer's GC takes a commit to need (worked out from its pages' rows) is what it needs
            assert r._manifest_keys[key] == frozenset(object_keys(read_manifest(d, key))), c
            on_disk = pages_on_disk(d)
            assert all(seen[k] == v for k, v in on_disk.items() if k in seen)  # never rewritten
            new = on_disk.keys() - seen.keys()
            assert len(new) == ((c + 1) % page == 0), (c, new)
            assert r.stats["last_commit_page_bytes"] == sum(os.path.getsize(d / k) for k in new)
            seen = on_disk
        r.close()
    paged, inline = sizes[4], sizes[10**6]
    assert max(paged[30:]) < max(paged[:10]) + 10 * 120  # ~100 bytes per page reference, 7 more pages
    assert inline[-1] > 4 * inline[3]  # the rows of 40 shards against 4


@pytest.mark.parametrize("lazy", [False, True])
def test_a_paged_manifest_restores_exactly_on_a_new_node_and_carries_its_pages_on(tmp_path, lazy):
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "sa"), str(d), capacity=W * 12 * CHUNK, table_page=3)
    fill(a, 0, 7 * CHUNK + 9)  # shards 0-6 done: pages [0,3) and [3,6), shard 6's rows inline
    a.commit({"at": 1})
    a.close()
    shutil.rmtree(tmp_path / "sa")
    b = make_replay(str(tmp_path / "sb"), str(d), token="b", lazy=lazy, capacity=W * 12 * CHUNK, table_page=3)
    assert b.restore().commit_id == 1
    for w in range(W):
        assert_batches_equal(b.read(w, 0, 7 * CHUNK + 9), expected(w, 0, 7 * CHUNK + 9, W))
    refs = raw(d, manifests(d)[-1])["pages"]
    fill(b, 7 * CHUNK + 9, 15 * CHUNK)  # the window (12 shards) moves past page [0,3)
    b.commit({"at": 2})
    m = raw(d, manifests(d)[-1])
    assert m["k_lo"] == 3 and [p[3:] for p in m["pages"]] == [[3, 6], [6, 9], [9, 12], [12, 15]]
    assert m["pages"][0] == refs[1]  # the restored writer references the page it inherited
    b.close()
    c = make_replay(str(tmp_path / "sc"), str(d), token="c", lazy=lazy, capacity=W * 12 * CHUNK, table_page=3)
    assert c.restore().commit_id == 2
    lo = c.info["lo"]
    for w in range(W):
        assert_batches_equal(c.read(w, lo, 15 * CHUNK), expected(w, lo, 15 * CHUNK, W))
    c.close()


def _two_commits(tmp_path: Path) -> tuple[Path, str]:
    """Commit 1 with no page, 2 and 3 sharing page [0,2): (durable folder, that page's key)."""
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d))  # table_page=2
    for stop in (CHUNK + 3, 2 * CHUNK + 3, 2 * CHUNK + 9):
        fill(r, r.info["t"], stop)
        r.commit({"t": stop})
    r.close()
    shutil.rmtree(tmp_path / "s")
    (page,) = pages_on_disk(d)
    assert [[p[0] for p in raw(d, m)["pages"]] for m in manifests(d)] == [[], [page], [page]]
    return d, page


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_damaged_page_falls_back_past_every_commit_using_it(tmp_path, damage):
    d, page = _two_commits(tmp_path)
    if damage == "delete":
        os.remove(d / page)
    else:
        data = bytearray((d / page).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / page).write_bytes(bytes(data))
    fp = fingerprint(str(d))  # verify reads the newest manifest: the page is named, its shards not hashed
    assert fp["corrupt"] == [page]
    r = make_replay(str(tmp_path / "s2"), str(d), token="b", lazy=False)
    restored = r.restore()
    assert restored.commit_id == 1 and restored.extra == {"t": CHUNK + 3}
    for w in range(W):
        assert_batches_equal(r.read(w, 0, CHUNK + 3), expected(w, 0, CHUNK + 3, W))
    quarantined = sorted(p.name for p in (d / "quarantine" / "tables").glob("*")) if damage == "flip" else []
    assert [n.startswith(page.split("/")[1]) for n in quarantined] == ([True, True] if damage == "flip" else [])
    for c in range(4):  # GC drops the commits that needed the page once 3 newer ones are kept
        fill(r, r.info["t"], r.info["t"] + 5)
        r.commit({"c": c})
    assert [m.rsplit("-", 1)[1] for m in manifests(d)] == ["000002.json"] * 3
    assert page not in pages_on_disk(d)
    r.close()


def test_no_commit_without_the_page_is_a_clear_error_naming_it(tmp_path):
    d, page = _two_commits(tmp_path)
    os.remove(d / manifests(d)[0])
    os.remove(d / page)
    r = make_replay(str(tmp_path / "s2"), str(d), token="b")
    with pytest.raises(NoRestorableCommitError, match=page):
        r.restore()
    r.close()


def test_gc_and_the_sweep_delete_pages_no_kept_manifest_references(tmp_path):
    d = tmp_path / "d"
    r = make_replay(str(tmp_path / "s"), str(d), keep=1, capacity=W * 4 * CHUNK)
    fill(r, 0, 8 * CHUNK + 1)  # pages [0,2) ... [6,8); the window holds shards 4-7 and the open one
    r.commit({})
    (d / "tables" / "0000000099-deadbeef.json").write_text("{}")  # a crashed commit's page
    assert len(pages_on_disk(d)) == 3  # [0,2) was never written: the window had passed it
    fill(r, 8 * CHUNK + 1, 12 * CHUNK + 1)
    r.commit({})
    m = read_manifest(d, manifests(d)[-1])
    assert set(pages_on_disk(d)) == {p[0] for p in m["pages"]} | {"tables/0000000099-deadbeef.json"}
    r.close()
    s = make_replay(str(tmp_path / "s2"), str(d), token="b", keep=1, capacity=W * 4 * CHUNK)
    assert s.restore() is not None
    assert set(pages_on_disk(d)) == {p[0] for p in m["pages"]}  # the sweep at restore took the stray page
    s.close()


def test_a_store_of_the_previous_format_restores_and_goes_on_with_pages(tmp_path):
    """An r2i-replay/2 manifest is a /3 one without pages (every row inline) and without its own checksum."""
    d = tmp_path / "d"
    a = make_replay(str(tmp_path / "sa"), str(d), table_page=10**6)
    fill(a, 0, 5 * CHUNK + 3)
    a.commit({})
    a.close()
    (key,) = manifests(d)
    m = raw(d, key)
    assert not m.pop("pages") and m.pop("rows_lo") == 0 and "r2i-replay/2" in READABLE
    m.pop("crc")  # manifests carry their checksum since after /3
    (d / key).write_text(json.dumps(m | {"format": "r2i-replay/2"}))
    b = make_replay(str(tmp_path / "sb"), str(d), token="b", lazy=False)
    assert b.restore().commit_id == 1
    fill(b, 5 * CHUNK + 3, 7 * CHUNK)
    b.commit({})
    b.close()
    assert [p[3:] for p in raw(d, manifests(d)[-1])["pages"]] == [[0, 2], [2, 4], [4, 6]]
    c = make_replay(str(tmp_path / "sc"), str(d), token="c")
    assert c.restore().commit_id == 2
    for w in range(W):
        assert_batches_equal(c.read(w, 0, 7 * CHUNK), expected(w, 0, 7 * CHUNK, W))
    c.close()
