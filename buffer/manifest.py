"""Manifest: the JSON document that is a commit. Built from a state snapshot, parsed back on restore."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from .codec import checksum
from .config import Schema, schema_to_json
from .durable import chunk_key
from .errors import SchemaError

FORMAT = "r2i-replay/1"


@dataclass
class ShardInfo:
    """Checksums of finished shard k: per stream and field (sorted field order), plus the durable object."""

    size: np.ndarray  # (W, F) u32 bytes of each field's shard file
    crc: np.ndarray  # (W, F) u32 checksum of each field's shard file
    obj: np.ndarray  # (W,) u32 id of the durable object: checksum of its per-file checksums


def object_ids(crc: np.ndarray) -> np.ndarray:
    """(W, F) per-file crc32c -> (W,) id of each stream's durable object (checksum of the checksums)."""
    return np.array([checksum(np.ascontiguousarray(c, "<u4").tobytes()) for c in crc], np.uint32)


def split_object(data: bytes, sizes: np.ndarray) -> list[bytes] | None:
    """A durable object back into its per-field shard files; None when the length is wrong."""
    if len(data) != int(sizes.sum()):
        return None
    ends = np.cumsum(sizes.astype(np.int64)).tolist()
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<u4").tobytes()).decode()


def _unb64(s: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<u4").reshape(shape).astype(np.uint32)


def encode_tables(shards: dict[int, ShardInfo], k_lo: int, k_hi: int) -> dict:
    ks = range(k_lo, k_hi)
    if not ks:
        return {"size": "", "crc": "", "obj": ""}
    return {
        "size": _b64(np.stack([shards[k].size for k in ks])),
        "crc": _b64(np.stack([shards[k].crc for k in ks])),
        "obj": _b64(np.stack([shards[k].obj for k in ks])),
    }


def decode_tables(m: dict) -> dict[int, ShardInfo]:
    k_lo, k_hi, w, f = m["k_lo"], m["k_hi"], m["num_streams"], len(m["schema"])
    n = k_hi - k_lo
    if n == 0:
        return {}
    t = m["tables"]
    size, crc, obj = _unb64(t["size"], (n, w, f)), _unb64(t["crc"], (n, w, f)), _unb64(t["obj"], (n, w))
    return {k_lo + i: ShardInfo(size[i], crc[i], obj[i]) for i in range(n)}


def chunk_keys(m: dict) -> dict[str, int]:
    """{durable chunk key: size} of every chunk object the manifest references."""
    out = {}
    for k, info in decode_tables(m).items():
        for w in range(m["num_streams"]):
            out[chunk_key(w, k, int(info.obj[w]))] = int(info.size[w].sum())
    return out


def check_compatible(m: dict, key: str, schema: Schema, num_streams: int, chunk: int, inner: int) -> None:
    """SchemaError naming the first difference between a stored manifest and this buffer's layout."""
    if m.get("format") != FORMAT:
        raise SchemaError(f"manifest {key}: format {m.get('format')!r}, expected {FORMAT!r}")
    ours = schema_to_json(schema)
    if m["schema"] != ours:
        diff = sorted(set(m["schema"]).symmetric_difference(ours)) or [
            k for k in ours if m["schema"][k] != ours[k]]
        raise SchemaError(f"manifest {key}: stored schema differs from ours at {diff}: "
                          f"stored {[m['schema'].get(k) for k in diff]}, ours {[ours.get(k) for k in diff]}")
    for name, val in (("num_streams", num_streams), ("chunk", chunk), ("inner", inner)):
        if m[name] != val:
            raise SchemaError(f"manifest {key}: stored {name}={m[name]}, this buffer uses {name}={val}")
