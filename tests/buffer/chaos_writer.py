"""A replay writer for the SIGKILL test: resumes from the durable store, adds, samples and commits forever.

Prints `ready <i>` after restore, `start ? <i>` before a commit begins and `done <commit> <i>` once it
is known durable, so the killer can bound which commit a later restore must find.
"""

from __future__ import annotations

import random
import sys

from tests.buffer.buffer_helpers import make_replay, make_step


def main(scratch: str, durable: str, seed: int, lazy: bool) -> None:
    r = make_replay(scratch, durable, capacity=2 * 100, chunk=16, inner=4, lazy=lazy, fsync=True,
                    token=f"writer-{seed}")
    got = r.restore()
    i = got.extra["i"] if got else 0
    print(f"ready {i}", flush=True)
    rng = random.Random(seed)
    pending = None
    while True:
        r.add(make_step(i, r.num_streams))
        i += 1
        if rng.random() < 0.3 and r.info["t"] - r.info["lo"] >= r.length:
            r.sample()
        if rng.random() < 0.05:
            if pending is not None:
                r.wait()
                print(f"done {pending[0]} {pending[1]}", flush=True)
            background = rng.random() < 0.5
            extra = {"i": i, "draws": r.info["draws"]}
            print(f"start ? {i}", flush=True)  # before the call: a kill may land right after it publishes
            c = r.commit(extra, {"state": str(i).encode()}, background=background)
            pending = (c, i) if background else None
            if not background:
                print(f"done {c} {i}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "lazy")
