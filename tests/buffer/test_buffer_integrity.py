"""Every trusted byte of the durable store: one bit flipped at each position class of each durable object kind,
each object truncated, a stale and a duplicated object. A restore falls back to the older commit that does not
need the object (and says so in `skipped`), raises an error naming it, or, where the damage is provably
harmless, restores the undamaged state bit for bit; `python -m orchestrator.verify` (`check_store`) names the
object, its kind and what is wrong.

The store: 2 streams, shards of 16 steps, inner chunks of 4, pages of 2 shards, three commits:
  commit 1 at step 20: shard 0 whole; pack 1 holds shard 1's first inner chunk (a segment)
  commit 2 at step 40: page [0, 2); shard 1's object skips its head (-h01); pack 2 holds shard 2's first two
  commit 3 at step 58: shard 2 (-h02, rows inline); pack 3 holds shard 3's first two inner chunks, tails, blob
"""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer import CorruptChunkError, NoRestorableCommitError, SchemaError, WriterFencedError, check_store
from buffer.durable import Durable
from buffer.integrity import parse_manifest, seal
from buffer.manifest import decode_heads, decode_tables, head_file_bytes
from orchestrator.verify import main as verify
from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step, read_manifest

W, CHUNK, INNER = 2, 16, 4
STOPS = (20, 40, 58)
M = {c: f"manifests/{c:010d}-000001.json" for c in (1, 2, 3)}


def fill(r, start: int, stop: int) -> None:
    for i in range(start, stop):
        r.add(make_step(i, W))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """The store, the state each commit restores to, and the keys and byte positions of its objects."""
    root = tmp_path_factory.mktemp("integrity")
    d = root / "d"
    r = make_replay(str(root / "s"), str(d))
    for c, stop in enumerate(STOPS, 1):
        fill(r, r.info["t"], stop)
        r.sample()
        r.commit({"c": c, "loop": {"x": 0.5 * c}}, {"state": f"agent state {c}".encode()})
    r.close()
    states = {}
    for c in (3, 2, 1):  # the state of commit c: restore with the newer manifests gone
        tmp = root / f"only{c}"
        shutil.copytree(d, tmp)
        for newer in range(c + 1, 4):
            (tmp / M[newer]).unlink()
        states[c], _ = restored_state(tmp, root / f"scratch{c}")
    m3, m2 = read_manifest(d, M[3]), read_manifest(d, M[2])
    chunks = sorted(str(p.relative_to(d)) for p in d.glob("chunks/*/*.bin"))
    return {"d": d, "states": states, "m3": m3, "m2": m2, "chunks": chunks,
            "page": next(str(p.relative_to(d)) for p in d.glob("tables/*.json"))}


def restored_state(d: Path, scratch: Path, token: str = "reader"):
    """What a fresh process restores from store `d`: (commit, extra, blobs, info, every step, two samples,
    the objects restore skipped), or the error it raises."""
    shutil.rmtree(scratch, ignore_errors=True)
    r = make_replay(str(scratch), str(d), token=token, lazy=False)
    try:
        got = r.restore()
        info = dict(r.info)
        steps = [{k: v.tobytes() for k, v in r.read(w, info["lo"], info["t"]).items()} for w in range(W)]
        samples = [{k: v.tobytes() for k, v in r.sample().items()} for _ in range(2)]
        return (got.commit_id, got.extra, got.blobs, info, steps, samples), [e.key for e in r.skipped]
    except (CorruptChunkError, NoRestorableCommitError) as e:
        return e, []
    finally:
        r.close()


def flip(path: Path, pos: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 1 << bit
    path.write_bytes(bytes(data))


def at(body: bytes, needle: bytes, offset: int = 0) -> int:
    i = body.index(needle)
    return i + offset


# --- position classes -------------------------------------------------------------------------------------
def manifest_positions(body: bytes, m: dict) -> dict[str, int]:
    """One byte per class of a manifest: JSON structure, a key, numeric counters and sizes, strings, the base64
    rows, the caller's extra, the page and pack references, its own checksum."""
    return {
        "structure: opening brace": 0,
        "structure: a colon": at(body, b'"format":', 8),
        "structure: a comma": at(body, b',"commit"'),
        "key: draws": at(body, b'"draws"', 2),
        "number: t": at(body, b'"t":58', 4),
        "number: lo": at(body, b'"lo":', 5),
        "number: sampler draws": at(body, b'"draws":', 8),
        "number: commit": at(body, b'"commit":3', 9),
        "string: format": at(body, b'"r2i-replay/3"', 12),
        "string: writer": at(body, b'"writer":"w1"', 11),
        "base64: tables.crc": at(body, b'"crc":"', 8),
        "base64: heads.rows": at(body, b'"rows":"', 9),
        "page reference: nbytes": at(body, m["pages"][0][0].encode(), len(m["pages"][0][0]) + 3),
        "pack reference: nbytes": at(body, b'"nbytes":', 9),
        "pack entry offset": at(body, b'"blob/state":[', 14),
        "extra": at(body, b'"x":', 4),
        "blob name": at(body, b'"blobs":["state"]', 11),
        "checksum itself": body.rindex(b'"crc":') + 6,  # the last key
    }


def pack_positions(m: dict) -> dict[str, int]:
    """One byte per class of a pack: a segment (inner chunks of the open shard), a tail frame, a blob, the
    last byte."""
    entries = m["pack"]["entries"]
    seg = decode_heads(m)[m["k_hi"]][0][-1]
    tail = entries["tail/1/image"]
    return {"segment": seg.off + 3, "tail frame": tail[0] + tail[1] // 2, "blob": entries["blob/state"][0] + 2,
            "last byte": m["pack"]["nbytes"] - 1}


def chunk_positions(d: Path, key: str, m: dict) -> dict[str, int]:
    """One byte per class of a chunk object (its first field's part): the frame header (zstd magic), frame
    payload, an inner chunk's crc32c, the shard index, the index's crc32c, and the last field's last byte."""
    w, k = int(key.split("/")[1]), int(key.split("/")[2][:10])
    info, head = decode_tables(m)[k], decode_heads(m).get(k, {}).get(w, ())
    first = int(info.size[w][0]) - head_file_bytes(head, 0)  # bytes of the first field in the object
    body = (d / key).read_bytes()
    n_inner = CHUNK // INNER
    at_index = first - 4 - 16 * n_inner
    index = np.frombuffer(body[at_index:first - 4], "<u8").reshape(n_inner, 2)
    nb = int(index[sum(g.m for g in head), 1])  # the object's first inner chunk: frame + crc32c
    return {"frame header": 0, "frame payload": nb // 2, "inner chunk crc32c": nb - 1,
            "shard index": at_index + 8, "index crc32c": first - 1, "last byte": len(body) - 1}


def json_positions(body: bytes) -> dict[str, int]:
    """Page or writer token: structure, a key, a number, a string value, the last byte."""
    return {"structure": 0, "key": 2, "number": re.search(rb":\s*\d", body).end() - 1,
            "string value": re.search(rb':\s*"', body).end(), "last byte": len(body) - 1}


# --- the cases --------------------------------------------------------------------------------------------
def check(store: dict, tmp: Path, damage, key: str, expect: str, kind: str | None, problems: set[str] | None,
          label: str = ""):
    """Copy the store, damage it, and assert what check_store reports and what a restore does. `expect`:
    "fallback:<c>" (restores commit c's exact state and names `key` among what it skipped), "error" (raises,
    naming `key`) or "identical" (the undamaged state, nothing skipped)."""
    d = tmp / "d"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(store["d"], d)
    damage(d)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = verify([str(d)])
    report = json.loads(out.getvalue())["damage"]
    found = {x.key: x for x in check_store(str(d))}
    assert report == [x.to_json() for x in found.values()] and rc == (1 if found else 0), (label, rc, report)
    assert all(f"damaged {x.kind} {x.key}: {x.problem}" in err.getvalue() for x in found.values()), label
    if kind is None:
        assert key not in found, (label, found)
    else:
        assert key in found and found[key].kind == kind, (label, key, found)
        assert problems is None or found[key].problem in problems, (label, found[key], problems)
    state, skipped = restored_state(d, tmp / "scratch")
    if expect == "error":
        assert isinstance(state, NoRestorableCommitError) and key in str(state), (label, state)
        assert "\n" not in str(state)
    else:
        c = 3 if expect == "identical" else int(expect.split(":")[1])
        assert not isinstance(state, Exception), (label, state)
        assert state == store["states"][c], f"{label}: restored commit {state[0]}, not commit {c}'s exact state"
        assert (key in skipped) == (expect != "identical"), (label, key, skipped)


FLIP_BITS = (0, 5, 7)


def test_every_bit_flip_of_a_manifest_is_refused_and_restore_falls_back(store, tmp_path):
    d = store["d"]
    body = (d / M[3]).read_bytes()
    # exhaustive at the parser: each of the 8 bits of every byte is refused, or parses to the same values (a
    # float's last digit that rounds to the same double): those are restored below and must change nothing
    same = []
    for pos in range(len(body)):
        for bit in range(8):
            bad = bytearray(body)
            bad[pos] ^= 1 << bit
            try:
                m = parse_manifest(bytes(bad), M[3], "d")
            except CorruptChunkError as e:
                assert e.kind == "manifest" and e.key == M[3]
                continue
            assert m == json.loads(body), (pos, bit)
            same.append((pos, bit))
    assert len(same) < 8
    for pos, bit in same:
        check(store, tmp_path, lambda d, p=pos, b=bit: flip(d / M[3], p, b), M[3], "identical", None, None,
              label=f"harmless flip at {pos}")
    # and through a whole restore, per position class
    for cls, pos in manifest_positions(body, store["m3"]).items():
        for bit in FLIP_BITS:
            check(store, tmp_path, lambda d, p=pos, b=bit: flip(d / M[3], p, b), M[3], "fallback:2", "manifest",
                  {"checksum mismatch", "unparsable", "invalid", "truncated"}, label=cls)


def test_a_truncated_manifest_falls_back_and_re_indenting_is_harmless(store, tmp_path):
    size = (store["d"] / M[3]).stat().st_size
    for n in (0, size // 2, size - 1):
        check(store, tmp_path, lambda d, n=n: (d / M[3]).write_bytes((d / M[3]).read_bytes()[:n]), M[3],
              "fallback:2", "manifest", {"truncated"})

    def reindent(d: Path) -> None:  # the same values, other bytes: the canonical checksum still matches
        (d / M[3]).write_text(json.dumps(json.loads((d / M[3]).read_text()), indent=2) + "\n")

    check(store, tmp_path, reindent, M[3], "identical", None, None)


def test_a_manifest_of_before_manifests_had_checksums_still_restores(store, tmp_path):
    def strip(d: Path) -> None:
        m = json.loads((d / M[3]).read_text())
        m.pop("crc")
        (d / M[3]).write_text(json.dumps(m, separators=(",", ":")))

    check(store, tmp_path, strip, M[3], "identical", None, None)

    def strip_and_flip(d: Path) -> None:  # without its checksum only the range checks guard it: the obj ids
        strip(d)
        body = (d / M[3]).read_bytes()
        flip(d / M[3], at(body, b'"crc":"', 8), 0)

    check(store, tmp_path, strip_and_flip, M[3], "fallback:2", "manifest", {"invalid"})

    def strip_and_flip_format(d: Path) -> None:  # an unknown format with no checksum: damage, not a newer writer
        strip(d)
        flip(d / M[3], at((d / M[3]).read_bytes(), b'"r2i-replay/3"', 12), 2)

    check(store, tmp_path, strip_and_flip_format, M[3], "fallback:2", "manifest", {"invalid"})


def test_a_damaged_page_falls_back_past_the_commits_that_list_it(store, tmp_path):
    page = store["page"]
    body = (store["d"] / page).read_bytes()
    for cls, pos in json_positions(body).items():
        for bit in FLIP_BITS:
            check(store, tmp_path, lambda d, p=pos, b=bit: flip(d / page, p, b), page, "fallback:1", "page",
                  {"checksum mismatch"}, label=cls)
    for n in (0, len(body) // 2, len(body) - 1):
        check(store, tmp_path, lambda d, n=n: (d / page).write_bytes(body[:n]), page, "fallback:1", "page",
              {"truncated"})


def test_a_damaged_pack_falls_back_or_is_named(store, tmp_path):
    m3, m2 = store["m3"], store["m2"]
    p3, p2 = m3["pack"]["key"], m2["pack"]["key"]
    for cls, pos in pack_positions(m3).items():
        kind = "blob" if cls in ("blob", "last byte") else "pack"  # blobs come last
        check(store, tmp_path, lambda d, p=pos: flip(d / p3, p, 0), p3, "fallback:2", kind,
              {"checksum mismatch"}, label=cls)
    # pack 2's segment starts shard 2 (which commit 3 needs) and is commit 2's own: back to commit 1
    seg = decode_heads(m2)[m2["k_hi"]][1][-1]
    check(store, tmp_path, lambda d: flip(d / p2, seg.off, 7), p2, "fallback:1", "pack", {"checksum mismatch"})
    # its blob only commit 2 reads: commit 3 restores as if nothing happened, and verify still names it
    blob = m2["pack"]["entries"]["blob/state"][0]
    check(store, tmp_path, lambda d: flip(d / p2, blob, 3), p2, "identical", "blob", {"checksum mismatch"})
    # pack 1 holds shard 1's head, which every commit needs: no fallback, an error naming it
    p1 = f"packs/{1:010d}-000001.pack"
    check(store, tmp_path, lambda d: flip(d / p1, 0, 1), p1, "error", "pack", {"checksum mismatch"})
    for n in (0, m3["pack"]["nbytes"] // 2, m3["pack"]["nbytes"] - 1):
        check(store, tmp_path, lambda d, n=n: (d / p3).write_bytes((d / p3).read_bytes()[:n]), p3, "fallback:2",
              "pack", {"truncated"})


def test_a_damaged_chunk_object_is_quarantined_and_restore_falls_back(store, tmp_path):
    (key,) = [k for k in store["chunks"] if k.startswith("chunks/1/0000000002-")]  # commit 3's only: -h02
    assert key.endswith("-h02.bin")
    body = (store["d"] / key).read_bytes()
    for cls, pos in chunk_positions(store["d"], key, store["m3"]).items():
        for bit in (0, 7):
            check(store, tmp_path, lambda d, p=pos, b=bit: flip(d / key, p, b), key, "fallback:2", "chunk",
                  {"checksum mismatch"}, label=cls)
    for n in (0, len(body) // 2, len(body) - 1):
        check(store, tmp_path, lambda d, n=n: (d / key).write_bytes(body[:n]), key, "fallback:2", "chunk",
              {"truncated"})
    (h1,) = [k for k in store["chunks"] if k.startswith("chunks/0/0000000001-")]  # commits 2 and 3: -h01
    check(store, tmp_path, lambda d: flip(d / h1, 5, 2), h1, "fallback:1", "chunk", {"checksum mismatch"})


def test_stale_and_duplicated_objects(store, tmp_path):
    m3 = store["m3"]
    p3, p2 = m3["pack"]["key"], store["m2"]["pack"]["key"]
    # an older object under a newer key: commit 2's pack where commit 3's should be
    check(store, tmp_path, lambda d: shutil.copy(d / p2, d / p3), p3, "fallback:2", "pack",
          {"truncated", "size mismatch", "checksum mismatch"})
    # another version of a chunk under its key (the other stream's shard 2)
    a, b = (next(k for k in store["chunks"] if k.startswith(f"chunks/{w}/0000000002-")) for w in (0, 1))
    check(store, tmp_path, lambda d: shutil.copy(d / a, d / b), b, "fallback:2", "chunk", None)
    check(store, tmp_path, lambda d: (d / b).unlink(), b, "fallback:2", "chunk", {"missing"})
    # commit 2's manifest copied under a newer name: refused as a duplicate, commit 3 restores
    dup = f"manifests/{4:010d}-000001.json"
    check(store, tmp_path, lambda d: shutil.copy(d / M[2], d / dup), dup, "fallback:3", "manifest", {"duplicate"})
    # a copy of a chunk under a key no manifest names is not trusted: ignored
    check(store, tmp_path, lambda d: shutil.copy(d / a, d / "chunks/0/0000000009-00000000.bin"),
          "chunks/0/0000000009-00000000.bin", "identical", None, None)


def test_a_damaged_or_stale_writer_token(store, tmp_path):
    body = (store["d"] / "writer.json").read_bytes()
    positions = json_positions(body) | {"checksum itself": at(body, b'"crc": ', 8)}
    for cls, pos in positions.items():
        # the token guards commits, not state: a new opener replaces it and restores the undamaged state
        check(store, tmp_path, lambda d, p=pos: flip(d / "writer.json", p, 0), "writer.json", "identical", "writer",
              {"checksum mismatch", "unparsable", "invalid", "truncated"}, label=cls)
    for n in (0, len(body) // 2, len(body) - 1):
        check(store, tmp_path, lambda d, n=n: (d / "writer.json").write_bytes(body[:n]), "writer.json",
              "identical", "writer", {"truncated"})

    check(store, tmp_path, lambda d: (d / "writer.json").unlink(), "writer.json", "identical", "writer", {"missing"})

    d = tmp_path / "live"
    shutil.copytree(store["d"], d)
    r = make_replay(str(tmp_path / "s-live"), str(d), token="w1")  # the writer of the store, open again
    assert r.restore().commit_id == 3
    fill(r, 58, 60)
    flip(d / "writer.json", positions["number"], 0)
    with pytest.raises(CorruptChunkError, match="writer.json") as err:
        r.commit({})  # it cannot tell whether it still owns the store: the commit is aborted
    assert err.value.kind == "writer" and not (d / f"manifests/{4:010d}-000001.json").exists()
    r.close()

    # stale: an older writer.json put back after a newer writer published
    d = tmp_path / "stale"
    shutil.copytree(store["d"], d)
    old = (d / "writer.json").read_bytes()
    r = make_replay(str(tmp_path / "s-stale"), str(d), token="w2")
    r.restore()
    fill(r, 58, 60)
    assert r.commit({}) == 4
    (d / "writer.json").write_bytes(old)
    assert [(x.kind, x.problem) for x in check_store(str(d))] == [("writer", "stale")]
    with pytest.raises(WriterFencedError, match="stale"):
        r.commit({})
    r.close()
    assert Durable(str(d)).take_over("w3") == 3  # above every published generation, not the stale token's + 1


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_a_bit_flipped_anywhere_is_found_and_never_restored_as_another_state(store, tmp_path_factory, data):
    """Any file of the store, any byte, any bit: verify names the file (unless the flip parses to the same
    manifest), and a restore gives one commit's exact state (an older one only naming the file) or an error
    naming it."""
    files = sorted(str(p.relative_to(store["d"])) for p in store["d"].rglob("*") if p.is_file())
    key = data.draw(st.sampled_from(files), "file")
    body = (store["d"] / key).read_bytes()
    pos, bit = data.draw(st.integers(0, len(body) - 1), "byte"), data.draw(st.integers(0, 7), "bit")
    tmp = tmp_path_factory.mktemp("anywhere")
    shutil.copytree(store["d"], tmp / "d")
    flip(tmp / "d" / key, pos, bit)
    found = {x.key for x in check_store(str(tmp / "d"))}
    state, skipped = restored_state(tmp / "d", tmp / "scratch")
    if key not in found:  # only a manifest whose flipped bytes hold the same values
        same = json.loads((tmp / "d" / key).read_bytes()) == json.loads(body) if key.startswith("manifests/") \
            else False
        assert same and state == store["states"][3], (key, pos, bit)
    elif isinstance(state, Exception):
        assert key in str(state), (key, pos, bit, state)
    else:
        assert state == store["states"][state[0]], (key, pos, bit)
        assert state[0] == 3 or key in skipped, (key, pos, bit, skipped)


def test_a_store_written_before_manifests_had_checksums_restores_and_goes_on(tmp_path):
    """golden/store-before-checksums: three commits (steps 20, 40, 58) written by the code of before, its
    manifests and writer.json without "crc"."""
    d = tmp_path / "d"
    shutil.copytree(Path(__file__).parent / "golden" / "store-before-checksums", d)
    assert "crc" not in json.loads((d / M[3]).read_text()) and "crc" not in (d / "writer.json").read_text()
    assert check_store(str(d)) == []
    r = make_replay(str(tmp_path / "s"), str(d), token="new", lazy=False)
    got = r.restore()
    assert (got.commit_id, got.extra, got.blobs, r.info["t"]) == (3, {"c": 3}, {"state": b"s3"}, 58)
    for w in range(W):
        assert_batches_equal(r.read(w, 0, 58), expected(w, 0, 58, W))
    fill(r, 58, 70)
    assert r.commit({"c": 4}) == 4
    r.close()
    assert check_store(str(d)) == [] and "crc" in json.loads((d / f"manifests/{4:010d}-000002.json").read_text())
    state, skipped = restored_state(d, tmp_path / "s2")
    assert state[0] == 4 and state[4][1]["image"] == expected(1, 0, 70, W)["image"].tobytes() and not skipped


def test_a_newer_format_with_its_checksum_is_refused_by_name_not_skipped(store, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(store["d"], d)
    m = json.loads((d / M[3]).read_text())
    m.pop("crc")
    (d / M[3]).write_bytes(seal(m | {"format": "r2i-replay/9"}))
    r = make_replay(str(tmp_path / "s"), str(d), token="reader")
    with pytest.raises(SchemaError, match=r"manifests/0000000003-000001.json: format 'r2i-replay/9'"):
        r.restore()  # falling back past a newer writer's commit would resume an older state silently
    r.close()
