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
from .integrity import Damage, check_store
from .replay import Replay, Restored, read_latest_commit, read_latest_manifest

__all__ = [
    "CorruptChunkError", "Damage", "DurableStoreError", "FieldSpec", "NoRestorableCommitError", "Replay",
    "ReplayConfig", "ReplayError", "Restored",
    "Schema", "SchemaError", "ScratchError", "WriterFencedError", "check_store", "read_latest_commit",
    "read_latest_manifest",
]
