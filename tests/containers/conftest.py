"""Fixtures for the container tests: podman configured as on the project machines, and the project image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "docker" / "containers.conf"
SHIM_DIR = REPO / "singularity" / "podman-shim"


def image_settings() -> dict[str, str]:
    """docker/image.env as a dict (the names the build script, Makefile and r2i.def share)."""
    out = {}
    for line in (REPO / "docker" / "image.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def podman_env() -> dict[str, str]:
    """The process environment with podman set up for runc (what works on these machines)."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` and return the completed process; a failure shows podman's stderr."""
    res = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="session")
def image() -> str:
    """The CPU image: $R2I_TEST_IMAGE as it is (`make test-container` builds first), else built (or reused
    through podman's layer cache) with its docker archive by docker/build-podman.sh. Under CI a missing podman
    is a failure."""
    if shutil.which("podman") is None and os.environ.get("R2I_TEST_IMAGE") is None:
        if os.geteuid() != 0:
            msg = "podman not installed (docker/build-podman.sh installs it as root)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"CI=true but {msg}")
            pytest.skip(msg)
    ref = os.environ.get("R2I_TEST_IMAGE")
    if not ref:
        ref = f"{image_settings()['IMAGE_NAME']}:cpu"
        build = subprocess.run(
            ["bash", str(REPO / "docker" / "build-podman.sh"), "--variant", "cpu"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert build.returncode == 0, f"image build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    assert podman("image", "exists", ref, check=False).returncode == 0, f"image {ref} not found in podman"
    return ref
