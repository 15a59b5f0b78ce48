"""The scratch folder belongs to one open Replay: a second copy (another process, or another Replay in this one)
works in a sibling folder of its own and fails cleanly at the writer fence; siblings do not outlive their use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.buffer.buffer_helpers import assert_batches_equal, expected, make_replay, make_step

ROOT = Path(__file__).resolve().parents[2]


class Holder:
    """tests/buffer/lock_holder.py in a subprocess, holding the lock of the scratch it opened."""

    def __init__(self, scratch: Path, durable: Path, token: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.buffer.lock_holder", str(scratch), str(durable),
                                      token], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.ready = self.line()
        assert self.ready.startswith("ready "), (self.ready, self.proc.stderr.read())
        self.scratch = self.ready.split(" ", 1)[1]

    def line(self) -> str:
        return self.proc.stdout.readline().strip()

    def ask(self) -> str:
        self.proc.stdin.write("commit\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> str:
        self.proc.stdin.close()
        out = self.line()
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()
        return out

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def files(folder: Path) -> dict[str, int]:
    return {os.path.relpath(os.path.join(d, f), folder): os.path.getsize(os.path.join(d, f))
            for d, _, fs in os.walk(folder) for f in fs}


def test_a_second_copy_works_in_a_sibling_and_the_first_fails_at_the_fence(tmp_path):
    s, d = tmp_path / "scratch", tmp_path / "d"
    first = Holder(s, d, "first")
    assert first.scratch == str(s)
    before = files(s)
    second = make_replay(str(s), str(d), token="second", capacity=2 * 200, chunk=16, inner=4)
    assert second.scratch_dir == f"{s}.r2i-copy-1"
    assert second.restore().extra == {"i": 40}
    for i in range(40, 75):
        second.add(make_step(i, 2))
    second.sample()
    second.commit({"i": 75})
    assert files(s) == before  # the first copy's shards were neither swept nor rewritten
    reply = first.ask()
    assert reply.startswith("fenced writer 'first' (generation 1) was fenced by 'second'"), reply
    for w in range(2):
        assert_batches_equal(second.read(w, 0, 75), expected(w, 0, 75, 2))
    second.close()
    assert not os.path.exists(f"{s}.r2i-copy-1")
    assert first.close() == "closed"
    third = make_replay(str(s), str(d), token="third", capacity=2 * 200, chunk=16, inner=4)
    assert third.scratch_dir == str(s)
    third.close()


def test_in_one_process_a_second_open_gets_a_sibling_and_close_releases(tmp_path):
    s = tmp_path / "scratch"
    a = make_replay(str(s), str(tmp_path / "da"), token="a")
    b = make_replay(str(s), str(tmp_path / "db"), token="b")
    c = make_replay(str(s), str(tmp_path / "dc"), token="c")
    assert (a.scratch_dir, b.scratch_dir, c.scratch_dir) == (str(s), f"{s}.r2i-copy-1", f"{s}.r2i-copy-2")
    assert (s / ".r2i-lock").read_text() == f"{os.getpid()}\n"
    a.close()
    a.close()  # a second close is harmless
    again = make_replay(str(s), str(tmp_path / "da"), token="a2")
    assert again.scratch_dir == str(s)
    b.close()
    assert not os.path.exists(f"{s}.r2i-copy-1") and os.path.isdir(f"{s}.r2i-copy-2")
    d = make_replay(str(s), str(tmp_path / "dd"), token="d")
    assert d.scratch_dir == f"{s}.r2i-copy-1"  # the lowest free sibling
    for r in (c, d, again):
        r.close()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scratch")) == ["scratch"]


def test_a_killed_copys_lock_is_released_and_its_sibling_swept(tmp_path):
    s, d = tmp_path / "scratch", tmp_path / "d"
    first = Holder(s, d, "first")
    second = Holder(s, d, "second")
    assert second.scratch == f"{s}.r2i-copy-1"
    second.kill()
    first.kill()
    (tmp_path / "scratch.r2i-copy-7").mkdir()  # named like a sibling but not ours (no lock file): kept
    (tmp_path / "scratch.1").mkdir()
    r = make_replay(str(s), str(d), token="third", capacity=2 * 200, chunk=16, inner=4)
    assert r.scratch_dir == str(s)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scratch")) == [
        "scratch", "scratch.1", "scratch.r2i-copy-7"]
    assert r.restore().extra == {"i": 80}  # the second copy resumed the first's 40 steps and added 40
    r.close()
