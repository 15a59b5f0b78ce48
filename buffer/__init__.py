"""Two-tier replay buffer: zarr v3 shards on node-local scratch, incremental atomic commits to fsspec URLs."""

from .config import FieldSpec, ReplayConfig, Schema
from .errors import (
                     CorruptChunkError,
                     DurableStoreError,
                     NoRestorableCommitError,
                     ReplayError,
                     SchemaError,
                     ScratchError,
                     WriterFencedError,
)
from .inspection import ChunkObject, StoreFingerprint, chunk_objects, fingerprint_store, manifest_keys, probe_durable
from .integrity import Damage, check_store
from .replay import Replay, Restored, read_latest_commit, read_latest_manifest

__all__ = [
    "ChunkObject", "CorruptChunkError", "Damage", "DurableStoreError", "FieldSpec", "NoRestorableCommitError",
    "Replay", "ReplayConfig", "ReplayError", "Restored", "Schema", "SchemaError", "ScratchError", "StoreFingerprint",
    "WriterFencedError", "check_store", "chunk_objects", "fingerprint_store", "manifest_keys", "probe_durable",
    "read_latest_commit", "read_latest_manifest",
]
