"""bench.chaos_verdict.verdict on hand-written trial records: lost and redone steps, restart and commit times."""

from __future__ import annotations

from bench.chaos_verdict import compact_events, verdict

FP = {"blobs": {"agent_state": "a"}, "replay": "r", "loop": {"env_steps": 100}, "metrics": "m", "device": "d",
      "corrupt": []}


def events() -> list[dict]:
    """Attempt A: fresh, 50 loop iterations of 2 envs (env step 100), SIGKILLed. Attempt B: resumed at 60."""
    a = [{"ev": "entry", "token": "A", "t": 10.0, "proc_start": 9.0, "num_envs": 2, "logs_resume": True}]
    a += [{"ev": "step", "token": "A", "t": 11.0 + n / 100, "n": n} for n in range(2, 52)]
    b = [{"ev": "entry", "token": "B", "t": 30.0, "proc_start": 28.0, "num_envs": 2, "logs_resume": True},
         {"ev": "resumed", "token": "B", "t": 33.0, "env_steps": 60},
         {"ev": "step", "token": "B", "t": 35.0, "n": 2},
         {"ev": "return", "token": "B", "t": 40.0, "result": "done", "calls": 20}]
    return a + b


def record(commits: list, **kw) -> dict:
    return {"events": events(), "commits": commits, "notes": [{"fault_time": 20.0}], "state": "done",
            "fingerprint": FP, **kw}


def test_a_kill_redoes_the_steps_after_the_last_commit_and_loses_none():
    v = verdict(record([(12.0, 40, "m1", 10), (20.0, 60, "m2", 20)]), FP)
    assert v["identical"] and v["interruptions"] == 1 and v["faults_delivered"] == 1
    assert v["lost_steps"] == 0 and v["redone_steps"] == 100 - 60
    assert v["restart_s"] == [35.0 - 28.0] and v["resume_s"] == [33.0 - 30.0] and v["stop_commit_s"] == []


def test_a_resume_behind_a_published_commit_counts_as_lost_and_a_changed_state_as_corrupt():
    other = {**FP, "replay": "x"}
    v = verdict(record([(12.0, 40, "m1", 10), (29.0, 80, "m3", 30)], fingerprint=other), FP)
    assert v["lost_steps"] == 80 - 60
    assert v["corrupt_restore"] and not v["identical"] and v["differences"] == ["replay"]


def test_compacted_events_keep_every_figure_of_the_verdict():
    rec = record([(12.0, 40, "m1", 10), (20.0, 60, "m2", 20)])
    small = compact_events(rec["events"])
    steps = [(e["token"], e["n"]) for e in small if e["ev"] == "step"]
    assert steps == [("A", 2), ("A", 51), ("B", 2)]
    assert [e for e in small if e["ev"] != "step"] == [e for e in rec["events"] if e["ev"] != "step"]
    assert verdict({**rec, "events": small}, FP) == verdict(rec, FP)


def test_a_stop_commit_is_timed_from_the_flag_and_from_the_signal():
    evs = [{"ev": "entry", "token": "A", "t": 10.0, "proc_start": 9.0, "num_envs": 2, "logs_resume": True},
           {"ev": "stop_seen", "token": "A", "t": 20.5, "signal_time": 20.0},
           {"ev": "stopped", "token": "A", "t": 20.6, "env_steps": 84},
           {"ev": "return", "token": "A", "t": 21.5, "result": "stopped"}]
    v = verdict({"events": evs, "commits": [], "notes": [], "state": "failed", "fingerprint": FP,
                 "run_error": "WriterFencedError: fenced"}, FP)
    assert v["stop_commit_s"] == [1.0] and v["signal_to_exit_s"] == [1.5]
    assert v["failed_clearly"] and not v["identical"] and v["error"].startswith("WriterFencedError")


def test_the_code_digest_sees_an_edit_to_what_the_jobs_import_and_nothing_else(tmp_path):
    from bench.chaos import code_digest

    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "train.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("notes")
    before = code_digest(tmp_path)
    (tmp_path / "README.md").write_text("other notes")
    (tmp_path / "agent" / "__pycache__").mkdir()
    (tmp_path / "agent" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    assert code_digest(tmp_path) == before
    (tmp_path / "agent" / "train.py").write_text("x = 2\n")
    assert code_digest(tmp_path) != before
    before = code_digest(tmp_path)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "chaos_entry.py").write_text("entry = 1\n")  # the jobs' run.entry
    assert code_digest(tmp_path) != before
