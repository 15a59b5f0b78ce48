"""SIGKILL a real writer process at random moments; every restore must be exactly the last commit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay

ROOT = Path(__file__).resolve().parents[2]


def _run_writer_and_kill(scratch: Path, durable: Path, seed: int, lazy: bool, delay: float) -> list[str]:
    cmd = [sys.executable, "-m", "tests.buffer.chaos_writer", str(scratch), str(durable), str(seed),
           "lazy" if lazy else "full"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.split())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lines and lines[0][0] == "ready", (lines, proc.poll(), proc.stderr.read() if proc.poll() else "")
    time.sleep(delay)
    assert proc.poll() is None, proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(timeout=10)
    return lines


def _check_restore(scratch: Path, durable: Path, lines: list, trial: int, lazy: bool) -> int:
    done = [int(x[2]) for x in lines if x[0] == "done"]
    started = [int(x[2]) for x in lines if x[0] == "start"]
    floor = max(done, default=int(lines[0][1]))
    ceiling = max(started, default=floor)
    r = make_replay(str(scratch), str(durable), capacity=2 * 100, chunk=16, inner=4, lazy=lazy,
                    token=f"checker-{trial}")
    got = r.restore()
    i = got.extra["i"] if got else 0
    # the restored commit is the last durable one: at least the last acknowledged, at most the last begun
    assert floor <= i <= ceiling, (floor, i, ceiling)
    assert r.info["t"] == i and got.blobs == {"state": str(i).encode()} if got else r.info["t"] == 0
    if got:
        assert r.info["draws"] == got.extra["draws"]
        lo = r.info["lo"]
        for w in range(r.num_streams):
            assert_batches_equal(r.read(w, lo, i), expected(w, lo, i, r.num_streams))
    r.close()
    return i


def _chaos(tmp_path: Path, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    durable = tmp_path / "durable"
    last = 0
    for trial in range(trials):
        lazy = rng.random() < 0.5
        scratch = tmp_path / ("scratch" if rng.random() < 0.7 else f"scratch-fresh-{trial}")
        lines = _run_writer_and_kill(scratch, durable, seed * 1000 + trial, lazy, rng.uniform(0.0, 0.8))
        assert int(lines[0][1]) == last, (lines[0], last)  # the writer resumed from what we last restored
        last = _check_restore(scratch, durable, lines, trial, lazy)
    assert last > 0


def test_sigkill_writer_restores_last_commit(tmp_path):
    _chaos(tmp_path, trials=4, seed=1)


@pytest.mark.slow
def test_sigkill_writer_restores_last_commit_many(tmp_path):
    _chaos(tmp_path, trials=120, seed=2)
