"""A replay writer in a process of its own, for the scratch-lock tests: opens a Replay (taking the scratch lock),
restores, adds and commits, prints `ready <scratch folder it works in>`, then adds and commits again for every
line on stdin, printing `committed <id>`, `fenced <message>` or `error <type> <message>`; closes at EOF."""

from __future__ import annotations

import sys

from buffer import WriterFencedError
from tests.buffer.buffer_helpers import make_replay, make_step


def main(scratch: str, durable: str, token: str) -> None:
    r = make_replay(scratch, durable, token=token, capacity=2 * 200, chunk=16, inner=4)
    got = r.restore()
    i = got.extra["i"] if got else 0

    def add(n: int) -> None:
        nonlocal i
        for _ in range(n):
            r.add(make_step(i, r.num_streams))
            i += 1

    add(40)
    r.commit({"i": i})
    print(f"ready {r.scratch_dir}", flush=True)
    for _ in sys.stdin:
        try:
            add(20)
            r.sample()
            print(f"committed {r.commit({'i': i})}", flush=True)
        except WriterFencedError as e:
            print(f"fenced {e}", flush=True)
        except Exception as e:  # noqa: BLE001 - the test reads what went wrong
            print(f"error {type(e).__name__} {e}", flush=True)
    r.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
