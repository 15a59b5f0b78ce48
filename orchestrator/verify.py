"""Fingerprint of a run's final durable state, read-only: what "bit-identical to an uninterrupted run" compares.

`fingerprint(durable)` reads the newest manifest of a durable store and hashes everything a resume depends on:
each caller blob (agent state, policy carry, env snapshots), the replay contents (every chunk object the
manifest references, the partial tails, positions and sampler state), the loop counters of `extra`, and
optionally the run's metrics.jsonl. It verifies every checksum on the way and lists what fails instead of
raising, so a corrupt store is reported, never hashed as if it were fine. It never takes the writer token
(opening a `Replay` would), so it is safe while a job runs.

    python -m orchestrator.verify DURABLE [--metrics FILE] [--against DURABLE2 [--against-metrics FILE2]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from buffer import read_latest_manifest
from buffer.codec import checksum
from buffer.durable import Durable
from buffer.errors import DurableStoreError
from buffer.manifest import chunk_keys, decode_tables, split_object

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

    `corrupt` lists durable objects of the newest readable manifest that are missing or fail their checksum
    (empty for a healthy store). Raises DurableStoreError when the store has no readable manifest.
    """
    d = Durable(durable, create=False)
    m = read_latest_manifest(durable, with_tables=True)
    if m is None:
        raise DurableStoreError(f"no readable manifest in {durable}")
    mkey = m["key"]
    corrupt: list[str] = []
    h = hashlib.sha256(json.dumps({k: m[k] for k in ("t", "lo", "k_lo", "k_hi", "sampler", "schema")},
                                  sort_keys=True).encode())
    tables = decode_tables(m)
    for key in sorted(chunk_keys(m)):
        stream, k = int(key.split("/")[1]), int(key.rsplit("/", 1)[1].split("-")[0])
        info = tables[k]
        try:
            data = d.get(key)
        except DurableStoreError:
            corrupt.append(key)
            continue
        parts = split_object(data, info.size[stream])
        if parts is None or any(checksum(p) != int(c) for p, c in zip(parts, info.crc[stream], strict=True)):
            corrupt.append(key)
        h.update(key.encode() + _sha(data).encode())
    pk = m["pack"]
    blobs: dict[str, str] = {}
    try:
        pack = d.get(pk["key"])
    except DurableStoreError:
        pack = b""
    if len(pack) != pk["nbytes"] or checksum(pack) != pk["crc"]:
        corrupt.append(pk["key"])
    else:
        for name, (off, n, _crc) in sorted(pk["entries"].items()):
            part = pack[off:off + n]
            if name.startswith("blob/"):
                blobs[name[5:]] = _sha(part)
            else:
                h.update(name.encode() + _sha(part).encode())
    out = {"commit": m["commit"], "manifest": mkey, "blobs": blobs, "replay": h.hexdigest(),
           "loop": _counters(m.get("extra", {})), "device": m.get("extra", {}).get("device"),
           "corrupt": corrupt, "metrics": None}
    if metrics is not None and Path(metrics).exists():
        out["metrics"] = _sha(Path(metrics).read_bytes())
    return out


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
        fp = fingerprint(a.durable, a.metrics)
        if a.against is None:
            print(json.dumps(fp, indent=1, sort_keys=True))
            return 1 if fp["corrupt"] else 0
        diff = differences(fp, fingerprint(a.against, a.against_metrics))
    except DurableStoreError as e:
        print(f"verify: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"identical": not diff, "differences": diff}))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
