"""Byte formats: zarr v3 `sharding_indexed` shards (one per field, stream and `chunk` steps) and tails.

A shard holds `chunk // inner` inner chunks, each encoded as bytes -> zstd (or blosc-lz4) -> crc32c, followed by
the index (offset, nbytes) uint64 little-endian per inner chunk plus its crc32c, exactly as zarr 3 writes them, so the
scratch folder opens with `zarr.open_group` (tested). We encode ourselves to keep the bytes in hand for the
durable copy and the manifest checksum, and to decode inner chunks straight into the sampled batch.
"""

from __future__ import annotations

import json

import numcodecs.blosc as _blosc
import numpy as np
from google_crc32c import value as _crc32c
from numcodecs import Zstd
from numcodecs import zstd as _nz
from xxhash import xxh3_64_intdigest

from .config import CODECS, FieldSpec
from .errors import CorruptChunkError

_EMPTY = np.uint64(2**64 - 1)
# zarr needs a finite shape; time is addressed absolutely and never wraps, so the axis is "infinite".
TIME_EXTENT = 1 << 40
# blosc-lz4 without shuffle: zarr's own `blosc` codec, and (unlike a bare LZ4 block) each frame's header says
# how many bytes it spans, so the concatenated frames of a tail decode one after another as zstd's do.
# Level 9 stores ~10 % less than 5 on Memory Maze frames and decodes as fast.
LZ4_CLEVEL = 9
_BLOSC_HEADER = 16


def crc32c(data: bytes | memoryview) -> int:
    """crc32c of `data` as an unsigned int (the checksum zarr's `crc32c` codec appends)."""
    return int(_crc32c(data))


def checksum(data: bytes | memoryview) -> int:
    """32-bit file checksum (xxh3, truncated) used in manifests. Not crc32c: a zarr shard ends with the
    crc32c of its index, and the crc32c of any message followed by its own crc32c is one constant."""
    return xxh3_64_intdigest(data) & 0xFFFFFFFF


def json_checksum(doc: dict) -> int:
    """checksum() of a JSON document's canonical form (sorted keys, no spaces), its own "crc" left out: what a
    manifest or the writer token carries under "crc". Canonical, so the bytes may be re-indented harmlessly."""
    body = {k: v for k, v in doc.items() if k != "crc"}
    return checksum(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _codec_meta(codec: str, level: int) -> dict:
    if codec == "lz4":
        return {"name": "blosc", "configuration": {"cname": "lz4", "clevel": LZ4_CLEVEL, "shuffle": "noshuffle",
                                                   "typesize": 1, "blocksize": 0}}
    return {"name": "zstd", "configuration": {"level": level, "checksum": False}}


def zarr_array_meta(num_streams: int, spec: FieldSpec, chunk: int, inner: int, level: int,
                    codec: str = "zstd") -> dict:
    """zarr.json of one field array: shape (W, TIME_EXTENT, *spec.shape), sharded along time."""
    trailing = list(spec.shape)
    return {
        "shape": [num_streams, TIME_EXTENT, *trailing],
        "data_type": spec.dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, chunk, *trailing]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": False if spec.dtype == "bool" else 0,
        "codecs": [{
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": [1, inner, *trailing],
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    _codec_meta(codec, level),
                    {"name": "crc32c"},
                ],
                "index_codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"},
                ],
                "index_location": "end",
            },
        }],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def shard_key(field: str, ndim: int, stream: int, k: int) -> str:
    """Relative path of shard k of `stream` inside the scratch zarr group (zarr's default key encoding)."""
    return "/".join([field, "c", str(stream), str(k), *(["0"] * ndim)])


class ShardCodec:
    """Encodes (chunk, *shape) arrays to shard bytes and decodes inner chunks back.

    codec "zstd" (at `level`) or "lz4" (blosc-lz4, no shuffle): on Memory Maze frames lz4 stores ~1.3x more and
    decodes and encodes 1.6-2.1x faster; through the buffer, samples 1.5-1.7x and adds 1.1-1.7x faster (two runs)
    (bench/results/buffer.json, `codecs`, `sample_lz4`, `add_lz4`).
    """

    def __init__(self, chunk: int, inner: int, level: int, codec: str = "zstd"):
        if codec not in CODECS:
            raise ValueError(f"replay codec {codec!r} is unknown; expected one of {list(CODECS)}")
        self.chunk, self.inner, self.n_inner, self.name = chunk, inner, chunk // inner, codec
        self._zstd = Zstd(level=level)
        if codec == "lz4":
            # Our threads decode different chunks in parallel; blosc's own pool (which numcodecs starts for
            # calls from the main thread, behind a global lock) would only oversubscribe the cores.
            _blosc.use_threads = False

    def _compress(self, view: np.ndarray) -> bytes:
        if self.name == "lz4":
            return _blosc.compress(view, b"lz4", LZ4_CLEVEL, _blosc.NOSHUFFLE, 0)
        return self._zstd.encode(view)

    def _decompress(self, enc: np.ndarray, out: np.ndarray) -> None:
        """`enc`: one frame or several concatenated ones, decoded in sequence into the flat uint8 `out`."""
        if self.name == "zstd":
            _nz.decompress(enc, out)
            return
        off = pos = 0
        while off < len(enc):
            hdr = enc[off:off + _BLOSC_HEADER].tobytes()
            nbytes, cbytes = int.from_bytes(hdr[4:8], "little"), int.from_bytes(hdr[12:16], "little")
            if len(hdr) < _BLOSC_HEADER or cbytes < _BLOSC_HEADER or off + cbytes > len(enc):
                raise CorruptChunkError(f"blosc frame at byte {off} of {len(enc)} is truncated")
            if nbytes:  # blosc refuses to decode the frame of an empty array
                _blosc.decompress(enc[off:off + cbytes], out[pos:pos + nbytes])
            off, pos = off + cbytes, pos + nbytes
        if pos != len(out):
            raise CorruptChunkError(f"blosc frames hold {pos} bytes, expected {len(out)}")

    def encode(self, steps: np.ndarray) -> bytes:
        """steps: (chunk, *shape), C-contiguous little-endian -> shard bytes."""
        assert steps.shape[0] == self.chunk, (steps.shape, self.chunk)
        return self.assemble([self.encode_inner(steps[j * self.inner:(j + 1) * self.inner])
                              for j in range(self.n_inner)])

    def encode_inner(self, steps: np.ndarray) -> bytes:
        """One inner chunk (inner, *shape) -> frame + crc32c, as it appears inside a shard."""
        enc = self._compress(_bytes_view(steps))
        return enc + crc32c(enc).to_bytes(4, "little")

    def assemble(self, parts: list[bytes]) -> bytes:
        """Shard bytes from its n_inner encoded inner chunks (encode_inner): the chunks, then the index."""
        assert len(parts) == self.n_inner, (len(parts), self.n_inner)
        sizes = np.array([len(p) for p in parts], "<u8")
        index = np.stack([np.cumsum(sizes) - sizes, sizes], axis=1).astype("<u8")
        ib = index.tobytes()
        return b"".join([*parts, ib, crc32c(ib).to_bytes(4, "little")])

    def index_nbytes(self) -> int:
        return self.n_inner * 16 + 4

    def parse_index(self, tail: bytes, where: str) -> np.ndarray:
        """(n_inner, 2) uint64 (offset, nbytes) from the last index_nbytes() bytes of a shard."""
        ib, c = tail[:-4], int.from_bytes(tail[-4:], "little")
        if len(tail) != self.index_nbytes() or crc32c(ib) != c:
            raise CorruptChunkError(f"shard index checksum mismatch in {where}")
        index = np.frombuffer(ib, "<u8").reshape(self.n_inner, 2)
        if (index == _EMPTY).any():
            raise CorruptChunkError(f"shard {where} has empty inner chunks; only full shards are written")
        return index

    def split_head(self, shard: bytes, m: int) -> tuple[list[bytes], int]:
        """(frames of the first m inner chunks, without their crc32c; bytes those chunks fill in `shard`)."""
        index = self.parse_index(shard[-self.index_nbytes():], "split_head")
        assert (index[0, 0] == 0 and (index[1:, 0] == index[:-1].sum(axis=1)).all()), index  # written in order
        n = index[:m, 1].astype(np.int64)
        return [shard[o:o + k - 4] for o, k in zip(index[:m, 0].tolist(), n.tolist(), strict=True)], int(n.sum())

    def join_head(self, head: bytes, m: int, rest: bytes, where: str) -> bytes:
        """Inverse of split_head: a shard file from its first m inner chunks' frames and the rest of the file.
        The frame boundaries come from the index at the end of `rest`."""
        index = self.parse_index(rest[-self.index_nbytes():], where)
        n = index[:m, 1].astype(np.int64) - 4
        if int(n.sum()) != len(head) or (n < 0).any():
            raise CorruptChunkError(f"head of {len(head)} bytes does not match the index of {where}")
        parts, o = [], 0
        for k in n.tolist():
            frame = head[o:o + k]
            parts += [frame, crc32c(frame).to_bytes(4, "little")]
            o += k
        return b"".join([*parts, rest])

    def decode_inner(self, enc: bytes | memoryview, out: np.ndarray, where: str) -> None:
        """Decode one inner chunk (frame + crc32c) into `out` ((inner, *shape), contiguous).

        Calls numcodecs' C `decompress` on a zero-copy view: the codec wrappers and slicing `bytes` cost
        about as much as decoding a small field's inner chunk. The decode itself runs without the GIL.
        """
        buf = np.frombuffer(enc, np.uint8)
        if len(buf) < 4 or crc32c(buf[:-4]) != int.from_bytes(buf[-4:].tobytes(), "little"):
            raise CorruptChunkError(f"inner chunk checksum mismatch in {where}")
        self._decompress(buf[:-4], _out_view(out))

    def encode_tail(self, steps: np.ndarray) -> bytes:
        """A partial tail (n, *shape): one frame, checksummed by the manifest."""
        return self._compress(_bytes_view(steps))

    def decode_tail(self, enc: bytes, out: np.ndarray) -> None:
        """A tail written as one frame or as several concatenated ones, decoded in sequence."""
        self._decompress(np.frombuffer(enc, np.uint8), _out_view(out))


def _bytes_view(a: np.ndarray) -> np.ndarray:
    """Flat uint8 view (bool arrays included, which numcodecs does not take as such); copies if strided."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _out_view(a: np.ndarray) -> np.ndarray:
    assert a.flags.c_contiguous, ("decode target must be C-contiguous", a.shape, a.strides)
    return a.reshape(-1).view(np.uint8)
