"""Sweep folders: layout, paths from config (never the cwd), refusal of existing names, request matching."""

from __future__ import annotations

import json

import pytest

from orchestrator.compose import compose_runs
from orchestrator.sweep import Request, SweepError, create_sweep, find_matching, open_sweep, run_paths


@pytest.fixture(scope="module")
def runs():
    return compose_runs("smoke", [0, 1], "cluster.durable=s3://bucket/r2i cluster.scratch=/scratch/$USER", "dev")


def test_layout_and_paths_come_from_the_config(tmp_path, runs, monkeypatch):
    monkeypatch.chdir("/")  # the cwd must not matter
    monkeypatch.setenv("USER", "ada")
    req = Request("smoke", [0, 1], [], "dev")
    sweep = create_sweep(tmp_path, "sw", req, runs)
    assert sorted(p.name for p in sweep.dir.iterdir()) == ["s0", "s1", "sweep.json"]
    assert sorted(p.name for p in (sweep.dir / "s0").iterdir()) == ["config.yaml", "logs", "run.json"]
    paths = run_paths(sweep.config("s1"), sweep.dir, "s1")
    assert paths.run_dir == tmp_path / "sw" / "s1"
    assert paths.durable == "s3://bucket/r2i/sw/s1"
    assert paths.resolved().scratch == "/scratch/ada/sw/s1"
    assert json.loads((sweep.dir / "s1" / "run.json").read_text())["durable"] == "s3://bucket/r2i/sw/s1"
    sweep.record_submission("s0", "12", "slurm", how="submit")
    sweep.record_submission("s0", "19", "slurm", how="resume")
    assert [(s["attempt"], s["job_id"]) for s in open_sweep(tmp_path, "sw").submissions("s0")] == [
        (0, "12"), (1, "19")]


def test_existing_names_are_refused_and_the_same_request_is_found(tmp_path, runs):
    req = Request("smoke", [0, 1], [], "dev")
    create_sweep(tmp_path, "a", req, runs)
    with pytest.raises(SweepError, match="sweep 'a' already exists .* `make resume SWEEP=a`"):
        create_sweep(tmp_path, "a", req, runs)
    assert find_matching(tmp_path, req).name == "a"
    assert find_matching(tmp_path, Request("smoke", [0], [], "dev")) is None
    with pytest.raises(SweepError, match="no sweep 'zz' under .*; sweeps: a"):
        open_sweep(tmp_path, "zz")


@pytest.mark.parametrize("name", ["../up", "a b", "", "-x"])
def test_odd_sweep_names_are_refused(tmp_path, runs, name):
    with pytest.raises(SweepError, match="must be letters, digits"):
        create_sweep(tmp_path, name, Request("smoke", None, [], "dev"), runs)
