"""The corrupt_chunk fault on a real durable store: bytes flipped in a chunk of the newest shard, found by the
buffer's inspection surface, and what it records about a fallback; the injector's view of the commits of a store
in a folder and in a bucket."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from bench.chaos_faults import Trial, _corrupt_newest_chunk
from buffer import Replay
from orchestrator.verify import fingerprint
from tests.chaos.test_verify import CFG, SCHEMA, make_store


def trial(durable: str, seed: int = 0) -> Trial:
    return Trial("corrupt_chunk", None, Path(durable).parent, durable, "", "0", random.Random(seed), 0.0)


def test_corrupt_chunk_flips_bytes_in_the_newest_shard_and_verify_names_it(tmp_path):
    durable = make_store(tmp_path, steps=40, early=13)
    before = {p: p.read_bytes() for p in Path(durable).glob("chunks/*/*")}
    t = trial(durable)
    _corrupt_newest_chunk(t)
    key = t.notes["corrupted"]
    changed = [str(p.relative_to(durable)) for p, b in before.items() if p.read_bytes() != b]
    assert changed == [key] and key.split("/")[2].startswith("0000000004-")  # shard 4, the newest finished
    assert (Path(durable) / key).stat().st_size == len(before[Path(durable) / key])
    newest = sorted(p.name for p in (Path(durable) / "manifests").iterdir())[-1]
    assert t.notes["manifest"] == newest and t.notes["fallback_possible"] is True  # the early commit lacks it
    assert fingerprint(durable)["corrupt"] == [key]


def test_corrupt_chunk_without_an_older_commit_has_no_fallback(tmp_path):
    durable = make_store(tmp_path, steps=40, early=100)  # one commit only
    t = trial(durable, seed=3)
    _corrupt_newest_chunk(t)
    assert t.notes["fallback_possible"] is False and fingerprint(durable)["corrupt"] == [t.notes["corrupted"]]


def committed_store(root: Path, durable: str) -> list[int]:
    """Two commits with the loop's progress record; the env steps each commit holds."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with Replay(SCHEMA, 2, str(root / "scratch"), durable, CFG, batch=2, length=4, writer_token="w") as r:
        for i in range(12):
            r.add({"obs": rng.integers(0, 255, (2, 3), dtype=np.uint8), "is_first": np.full(2, i == 0)})
            if i in (5, 11):
                r.commit({"progress": {"env_steps": 2 * (i + 1), "updates": i}}, {"agent_state": b"x"})
    return [12, 24]


def test_the_injector_reads_commits_from_a_bucket_as_from_a_folder(tmp_path, s3_url):
    seen = {}
    for name, durable in (("folder", str(tmp_path / "folder" / "durable")), ("bucket", s3_url)):
        t = Trial("preempt", None, tmp_path / name, durable, "", "0", random.Random(0), 0.0)
        assert t.manifests() == [] and t.remote == (name == "bucket")  # before the first commit
        t.observe()
        steps = committed_store(tmp_path / name, durable)
        t.observe()
        seen[name] = (t.manifests(), [c[1:] for c in t.commits])
        assert [c[1] for c in t.commits] == steps[-1:]  # only the newest commit, once
        t.observe()
        assert len(t.commits) == 1
    assert seen["folder"] == seen["bucket"] and len(seen["folder"][0]) == 2
