"""orchestrator.verify on real durable stores: equal runs fingerprint equal, any changed byte is caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from buffer import DurableStoreError, FieldSpec, Replay, ReplayConfig
from orchestrator.verify import differences, fingerprint, main

SCHEMA = {"obs": FieldSpec((3,), "uint8"), "is_first": FieldSpec((), "bool")}
CFG = ReplayConfig(capacity=256, chunk=8, inner=4, prefetch=0, threads=1, fsync=False)


def make_store(root: Path, steps: int = 21, blob: bytes = b"params", seed: int = 0, early: int = 10) -> str:
    """A durable store after `steps` adds of 2 streams (2 finished chunks per stream plus a tail), committed."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    durable = str(root / "durable")
    with Replay(SCHEMA, 2, str(root / "scratch"), durable, CFG, batch=2, length=4, writer_token="w") as r:
        for i in range(steps):
            r.add({"obs": rng.integers(0, 255, (2, 3), dtype=np.uint8), "is_first": np.full(2, i == 0)})
            if i == early:
                r.commit({"loop": {"env_steps": i, "wall_time_s": 1.0}}, {"agent_state": b"early"})
        r.commit({"loop": {"env_steps": steps, "wall_time_s": float(seed)}}, {"agent_state": blob})
    (root / "metrics.jsonl").write_text('{"env_steps": 10}\n')
    return durable


def test_same_contents_give_the_same_fingerprint_and_clock_keys_are_ignored(tmp_path):
    a = fingerprint(make_store(tmp_path / "a"), tmp_path / "a" / "metrics.jsonl")
    b = fingerprint(make_store(tmp_path / "b", seed=0), tmp_path / "b" / "metrics.jsonl")
    assert a["corrupt"] == [] and a["loop"] == {"env_steps": 21} and set(a["blobs"]) == {"agent_state"}
    assert differences(a, b) == []


def test_the_same_contents_committed_at_other_moments_fingerprint_equal(tmp_path):
    a = make_store(tmp_path / "a")  # the early commit's tail holds no full inner chunk
    b = make_store(tmp_path / "b", early=13)  # its tail's first inner chunk is the head of chunk 1
    ka, kb = (sorted(p.name for p in (Path(x) / "chunks" / "0").iterdir()) for x in (a, b))
    assert ka != kb and any("-h01" in k for k in kb)
    assert differences(fingerprint(a), fingerprint(b)) == []
    pack = sorted((Path(b) / "packs").iterdir())[0]  # the early commit's, which holds the head
    data = bytearray(pack.read_bytes())
    data[4] ^= 0x01
    pack.write_bytes(bytes(data))
    assert fingerprint(b)["corrupt"] == [f"packs/{pack.name}"]  # it holds stream 0's head first


def test_a_different_blob_replay_or_metrics_is_named(tmp_path):
    a = fingerprint(make_store(tmp_path / "a"), tmp_path / "a" / "metrics.jsonl")
    b = fingerprint(make_store(tmp_path / "b", blob=b"other"), tmp_path / "b" / "metrics.jsonl")
    assert differences(a, b) == ["blobs/agent_state"]
    c = fingerprint(make_store(tmp_path / "c", seed=1))
    assert differences(a, c) == ["metrics", "replay"]


def test_a_flipped_byte_in_a_chunk_or_the_pack_is_reported_corrupt(tmp_path):
    durable = make_store(tmp_path)
    chunk = sorted((Path(durable) / "chunks" / "1").iterdir())[-1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    fp = fingerprint(durable)
    assert fp["corrupt"] == [f"chunks/1/{chunk.name}"]
    assert "corrupt" in differences(fp, fp)
    pack = next((Path(durable) / "packs").iterdir())
    pack.write_bytes(pack.read_bytes()[:-1] + b"\0")
    assert f"packs/{pack.name}" in fingerprint(durable)["corrupt"]


def test_cli_compares_two_stores_and_fails_clearly_without_a_manifest(tmp_path, capsys):
    a, b = make_store(tmp_path / "a"), make_store(tmp_path / "b", blob=b"x")
    assert main([a, "--against", a]) == 0
    assert json.loads(capsys.readouterr().out) == {"identical": True, "differences": []}
    assert main([a, "--against", b]) == 1
    assert json.loads(capsys.readouterr().out)["differences"] == ["blobs/agent_state"]
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no readable manifest" in capsys.readouterr().err
    with pytest.raises(DurableStoreError):
        fingerprint(str(tmp_path / "empty"))


def test_cli_reports_each_damaged_object_with_its_kind_and_problem(tmp_path, capsys):
    durable = make_store(tmp_path)
    assert main([durable]) == 0
    assert json.loads(capsys.readouterr().out)["damage"] == []
    newest, older = sorted((Path(durable) / "manifests").iterdir(), reverse=True)
    newest.write_bytes(newest.read_bytes()[:-1])  # truncated: the early commit is what a restore gets
    pack = sorted((Path(durable) / "packs").iterdir())[0]  # the early commit's, its blob last
    pack.write_bytes(pack.read_bytes()[:-1] + bytes([pack.read_bytes()[-1] ^ 0x10]))
    assert main([durable]) == 1
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [(x["key"], x["kind"], x["problem"]) for x in out["damage"]] == [
        (f"manifests/{newest.name}", "manifest", "truncated"), (f"packs/{pack.name}", "blob", "checksum mismatch")]
    assert out["damage"][1]["needed_by"] == [f"manifests/{older.name}"]
    assert out["manifest"] == f"manifests/{older.name}" and f"manifests/{newest.name}" in out["corrupt"]
    assert f"damaged blob packs/{pack.name}: checksum mismatch" in captured.err
