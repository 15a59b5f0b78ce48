"""Fingerprint of a run's final durable state, read-only: what "bit-identical to an uninterrupted run" compares.

`fingerprint(durable)` reads the newest manifest of a durable store and hashes everything a resume depends on:
each caller blob (agent state, policy carry, env snapshots), the replay contents (every shard the manifest
references, as content: a chunk object joined to its head frames; the partial tails, positions and sampler
state), the loop counters of `extra`, and optionally the run's metrics.jsonl. It verifies every checksum on
the way and lists what fails instead of raising, so a corrupt store is reported, never hashed as if it were
fine. It never takes the writer token (opening a `Replay` would), so it is safe while a job runs.

    python -m orchestrator.verify DURABLE [--metrics FILE] [--against DURABLE2 [--against-metrics FILE2]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from buffer import check_store, read_latest_manifest
from buffer.codec import ShardCodec, checksum
from buffer.durable import Durable, chunk_key
from buffer.errors import CorruptChunkError, DurableStoreError
from buffer.manifest import (
    Head,
    decode_heads,
    decode_tables,
    head_fields,
    head_m,
    join_shard,
    load_pages,
    read_segments,
)

# extra.loop keys that measure the clock, not the trajectory
CLOCK_KEYS = ("wall_time_s", "steps_per_s", "time")
# what must be equal for two runs to be called bit-identical ("commit"/"manifest" count commits, not state)
COMPARED = ("blobs", "replay", "loop", "metrics", "device", "corrupt")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _counters(extra: dict) -> dict:
    loop = extra.get("loop") if isinstance(extra.get("loop"), dict) else extra.get("progress", {})
    return {k: v for k, v in sorted(loop.items()) if k not in CLOCK_KEYS}


def fingerprint(durable: str, metrics: str | Path | None = None) -> dict:
    """{commit, manifest, blobs {name: sha256}, replay sha256, loop counters, metrics sha256, device, corrupt}.

    `corrupt` lists the manifests newer than the one read (which failed their own checks) and the durable objects
    of the newest manifest that passes them that are missing or fail their checksum (empty for a healthy store).
    Raises DurableStoreError when no manifest passes its checks.
    """
    d = Durable(durable, create=False)
    m = read_latest_manifest(durable, with_tables=True)
    if m is None:
        raise DurableStoreError(f"no readable manifest in {durable}")
    mkey = m["key"]
    # newer manifests than the one read failed their own checks (a restore skips them too)
    corrupt = [k for c, g, k in d.manifests() if (c, g) > (m["commit"], m["generation"])]
    h = hashlib.sha256(json.dumps({k: m[k] for k in ("t", "lo", "k_lo", "k_hi", "sampler", "schema")},
                                  sort_keys=True).encode())
    try:
        m = load_pages(d, m, mkey)
        tables, heads = decode_tables(m), decode_heads(m)
    except CorruptChunkError as e:  # the rows of finished shards are lost with their page: nothing to hash
        corrupt.append(e.key)
        tables, heads = {}, decode_heads(m)
    codec, nf = ShardCodec(m["chunk"], m["inner"], m["zstd_level"], m.get("codec", "zstd")), len(m["schema"])
    for k, info in sorted(tables.items()):
        for w in range(m["num_streams"]):
            head = heads.get(k, {}).get(w, ())
            key = chunk_key(w, k, int(info.obj[w]), head_m(head))
            parts, bad = _shard_files(d, codec, key, info.size[w], head)
            if parts is None or any(checksum(p) != int(c) for p, c in zip(parts, info.crc[w], strict=True)):
                corrupt.append(bad)
                continue
            # the shard's content, not its objects: which inner chunks sit in packs depends on when commits fell
            h.update(f"{w}/{k}".encode() + _sha(b"".join(parts)).encode())
    pk = m["pack"]
    blobs: dict[str, str] = {}
    try:
        pack = d.get(pk["key"])
    except DurableStoreError:
        pack = b""
    opened = heads.get(m["k_hi"], {})
    segs = [g for head in opened.values() for g in head]
    try:
        got, bad = read_segments(d, segs)
    except DurableStoreError:
        got, bad = {}, segs[0].pack
    if bad is not None:
        corrupt.append(bad)
    elif len(pack) != pk["nbytes"] or checksum(pack) != pk["crc"]:
        corrupt.append(pk["key"])
    else:
        entries = pk["entries"]
        for name, (off, n, *_) in sorted(entries.items()):
            if name.startswith("blob/"):
                blobs[name[5:]] = _sha(pack[off:off + n])
        for w in range(m["num_streams"] if m["t"] > m["k_hi"] * m["chunk"] else 0):
            frames = head_fields(opened.get(w, ()), got, nf)
            for j, f in enumerate(sorted(m["schema"])):
                off, n = entries.get(f"tail/{w}/{f}", (0, 0))[:2]
                h.update(f"tail/{w}/{f}".encode() + _sha(frames[j] + pack[off:off + n]).encode())
    out = {"commit": m["commit"], "manifest": mkey, "blobs": blobs, "replay": h.hexdigest(),
           "loop": _counters(m.get("extra", {})), "device": m.get("extra", {}).get("device"),
           "corrupt": list(dict.fromkeys(corrupt)), "metrics": None}
    if metrics is not None and Path(metrics).exists():
        out["metrics"] = _sha(Path(metrics).read_bytes())
    return out


def _shard_files(d: Durable, codec: ShardCodec, key: str, sizes, head: Head) -> tuple[list[bytes] | None, str]:
    """(per-field shard files of one durable chunk object after its segments' frames, or None; the key at fault)"""
    try:
        data = d.get(key)
    except DurableStoreError:
        return None, key
    try:
        got, bad = read_segments(d, list(head))
    except DurableStoreError:
        return None, head[0].pack
    if bad is not None:
        return None, bad
    return join_shard(codec, data, sizes, head, got, key), key


def differences(a: dict, b: dict) -> list[str]:
    """Names of the compared parts where fingerprints `a` and `b` differ (blobs by name); [] = bit-identical."""
    out = [f"blobs/{k}" for k in sorted(a["blobs"].keys() | b["blobs"].keys())
           if a["blobs"].get(k) != b["blobs"].get(k)]
    out += [k for k in COMPARED if k != "blobs" and a.get(k) != b.get(k)]
    if a["corrupt"] or b["corrupt"]:
        out.append("corrupt")
    return sorted(set(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.verify", description=__doc__.split("\n\n")[0])
    p.add_argument("durable", help="durable URL or folder of a run")
    p.add_argument("--metrics", help="the run's logs/metrics.jsonl")
    p.add_argument("--against", help="a second run's durable store to compare with")
    p.add_argument("--against-metrics", help="the second run's logs/metrics.jsonl")
    a = p.parse_args(argv)
    try:
        if a.against is None:
            damage = check_store(a.durable)
            for x in damage:
                print(f"verify: damaged {x.kind} {x.key}: {x.problem} ({x.detail})"
                      + (f"; needed by {', '.join(x.needed_by)}" if x.needed_by else ""), file=sys.stderr)
            try:
                fp = fingerprint(a.durable, a.metrics)
            except DurableStoreError as e:  # no manifest passes its checks: still say what is damaged
                if not damage:
                    raise
                print(f"verify: {e}", file=sys.stderr)
                fp = {"corrupt": [x.key for x in damage]}
            print(json.dumps(fp | {"damage": [x.to_json() for x in damage]}, indent=1, sort_keys=True))
            return 1 if fp["corrupt"] or damage else 0
        fp = fingerprint(a.durable, a.metrics)
        diff = differences(fp, fingerprint(a.against, a.against_metrics))
    except DurableStoreError as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"identical": not diff, "differences": diff}))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
