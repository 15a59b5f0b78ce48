"""The corrupt_chunk fault on a real durable store: bytes flipped in a chunk of the newest shard, found by the
buffer's inspection surface, and what it records about a fallback."""

from __future__ import annotations

import random
from pathlib import Path

from bench.chaos_faults import Trial, _corrupt_newest_chunk
from orchestrator.verify import fingerprint
from tests.chaos.test_verify import make_store


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
