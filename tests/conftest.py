"""Shared fixtures: the dev Slurm cluster gate."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.s3_server import s3_endpoint, s3_url  # noqa: F401 - fixtures of every test folder

# Before anything imports jax: XLA compiles are the bulk of test time on 2 cores, and many tests (and the
# subprocesses they start, which inherit this) compile the same tiny programs. A cache hit is the same binary.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "r2i-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def _cluster_problem() -> str | None:
    """Why the dev cluster cannot take jobs, or None when it can."""
    if shutil.which("sinfo") is None:
        return "sinfo not found (run `make cluster-up`)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out (slurmctld not answering)"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip() or out.stdout.strip()}"
    parts = {line.split()[0].rstrip("*") for line in out.stdout.splitlines() if line.strip()}
    missing = {"low", "high"} - parts
    return f"partitions {sorted(missing)} missing (is this the dev cluster?)" if missing else None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Require the dev cluster. Under CI a missing cluster fails the test instead of skipping it."""
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but the dev Slurm cluster is unusable: {problem}")
    pytest.skip(f"dev Slurm cluster unusable: {problem}")
