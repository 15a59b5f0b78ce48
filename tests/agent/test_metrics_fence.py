"""Two copies of a job share `metrics.jsonl` until the stale one is fenced: the file must end as the owner's rows
alone (the chaos suite's second_writer kind found stale rows left in it)."""

from __future__ import annotations

import json

import pytest

from agent.metrics import MetricsLog
from agent.run_config import WandbConfig
from buffer import WriterFencedError
from tests.buffer.buffer_helpers import make_replay

OFF = WandbConfig(mode="disabled")


def row(step: int) -> dict:
    return {"env_steps": step, "episode/return": step / 10}


def rows_in(path) -> list[int]:
    return [json.loads(line)["env_steps"] for line in path.read_text().splitlines()]


def test_a_stale_copy_cannot_leave_rows_in_the_owners_metrics(tmp_path):
    durable, logs = str(tmp_path / "durable"), tmp_path / "logs"
    old = make_replay(str(tmp_path / "s_old"), durable, token="old")
    stale = MetricsLog(logs, OFF, "run", owner_check=old.check_writer)
    stale.open(committed_bytes=0)
    for s in (100, 200):
        stale.write(row(s), {})
    committed = stale.bytes_written  # the commit at step 200 records this many bytes
    stale.write(row(300), {})  # after the commit: to be dropped by the resume

    new = make_replay(str(tmp_path / "s_new"), durable, token="new")  # takes over the run: `old` is fenced
    owner = MetricsLog(logs, OFF, "run", owner_check=new.check_writer)
    owner.open(committed_bytes=committed)
    assert rows_in(logs / "metrics.jsonl") == [100, 200]

    with pytest.raises(WriterFencedError):
        stale.write(row(300), {})  # every write asks first: the stale copy is fenced and writes nothing
    # a row the stale copy wrote between its last check and the take-over is cut by the owner's next write
    with open(logs / "metrics.jsonl", "ab") as f:
        f.write(b'{"env_steps": 300, "stale": true}\n')
    owner.write(row(300), {})
    owner.write(row(400), {})
    assert rows_in(logs / "metrics.jsonl") == [100, 200, 300, 400]
    assert (logs / "metrics.jsonl").stat().st_size == owner.bytes_written
    for m in (stale, owner):
        m.close()
    for r in (old, new):
        r.close()


def test_the_owner_asks_before_every_row_and_keeps_all_of_them(tmp_path):
    calls = []
    m = MetricsLog(tmp_path, OFF, "run", owner_check=lambda: calls.append(1))
    m.open(committed_bytes=0)
    for s in range(5):
        m.write(row(s), {})
    m.close()
    assert len(calls) == 5 and rows_in(tmp_path / "metrics.jsonl") == [0, 1, 2, 3, 4]
