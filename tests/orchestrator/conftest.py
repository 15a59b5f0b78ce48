"""Fixtures of the orchestrator tests: a private sweeps root and fake Slurm executables."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.config import REPO_ROOT


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A private sweeps root; jobs import the workload from the checkout."""
    r = tmp_path / "runs"
    monkeypatch.setenv("R2I_RUN_ROOT", str(r))
    path = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    return r


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """`fake_bin(name, script)`: an executable shell script `name` first on PATH (a fake Slurm command)."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")

    def make(name: str, script: str) -> Path:
        p = d / name
        p.write_text("#!/bin/bash\n" + script + "\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
        return p

    return make
