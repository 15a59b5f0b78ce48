"""The read-only inspection surface: manifests newest first, the chunk objects a manifest references (its pages'
rows included), a fingerprint that is a record and a probe that names a bad URL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buffer import (
    CorruptChunkError,
    DurableStoreError,
    StoreFingerprint,
    chunk_objects,
    fingerprint_store,
    manifest_keys,
    probe_durable,
)
from tests.chaos.test_verify import make_store

GOLDEN = Path(__file__).parent / "golden" / "store-before-checksums"


def test_chunk_objects_are_the_chunk_files_of_the_newest_manifest(tmp_path):
    durable = make_store(tmp_path, steps=40, early=13)
    keys = manifest_keys(durable)
    assert keys == sorted(f"manifests/{p.name}" for p in (Path(durable) / "manifests").iterdir())[::-1]
    objs = chunk_objects(durable, keys[0])
    on_disk = {str(p.relative_to(durable)): p.stat().st_size for p in Path(durable).glob("chunks/*/*")}
    assert {o.key: o.nbytes for o in objs} == on_disk  # the writer collected what no kept manifest needs
    assert [(o.shard, o.stream) for o in objs] == [(k, w) for k in range(5) for w in range(2)]
    assert all(o.key.startswith(f"chunks/{o.stream}/{o.shard:010d}-") for o in objs)
    older = chunk_objects(durable, keys[1])  # the early commit: shard 1 was open then
    assert [(o.shard, o.stream) for o in older] == [(0, 0), (0, 1)]


def test_chunk_objects_of_a_damaged_manifest_name_it(tmp_path):
    durable = make_store(tmp_path)
    newest = manifest_keys(durable)[0]
    p = Path(durable) / newest
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(CorruptChunkError) as e:
        chunk_objects(durable, newest)
    assert e.value.key == newest and e.value.problem == "truncated"


def test_a_store_written_before_manifests_had_checksums_is_inspected(tmp_path):
    durable = tmp_path / "durable"
    shutil.copytree(GOLDEN, durable)
    fp = fingerprint_store(str(durable))
    assert fp.corrupt == () and fp.manifest == manifest_keys(str(durable))[0]
    objs = chunk_objects(str(durable), fp.manifest)
    assert len(objs) == 6 and {o.key for o in objs} <= {str(p.relative_to(durable)) for p in durable.glob("chunks/*/*")}


def test_the_fingerprint_is_a_record_that_round_trips_through_json(tmp_path):
    fp = fingerprint_store(make_store(tmp_path))
    assert fp.extra == {"loop": {"env_steps": 21, "wall_time_s": 0.0}} and fp.commit == 2
    assert StoreFingerprint.from_json(json.loads(json.dumps(fp.to_json()))) == fp
    with pytest.raises(ValueError, match="store fingerprint: KeyError 'replay'"):
        StoreFingerprint.from_json({k: v for k, v in fp.to_json().items() if k != "replay"})


def test_probe_names_a_durable_url_that_cannot_be_created(tmp_path):
    probe_durable(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()
    with pytest.raises(DurableStoreError, match="parent folder .* does not exist"):
        probe_durable(str(tmp_path / "missing" / "deeper"))
