"""Fingerprint of a run's final durable state, read-only: what "bit-identical to an uninterrupted run" compares.

`fingerprint(durable)` takes the buffer's fingerprint of the newest commit (`buffer.fingerprint_store`: each
caller blob, the replay contents as content, positions and sampler state, every checksum verified and what fails
listed instead of hashed) and adds what the run owns: the loop counters of the commit's `extra` (without the
clock) and optionally the run's metrics.jsonl. It never takes the writer token, so it is safe while a job runs.

    python -m orchestrator.verify DURABLE [--metrics FILE] [--against DURABLE2 [--against-metrics FILE2]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from buffer import DurableStoreError, check_store, fingerprint_store

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
    fp = fingerprint_store(durable)
    out = {"commit": fp.commit, "manifest": fp.manifest, "blobs": dict(fp.blobs), "replay": fp.replay,
           "loop": _counters(fp.extra), "device": fp.extra.get("device"), "corrupt": list(fp.corrupt),
           "metrics": None}
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
