"""`make sif` (singularity/build-sif.sh): a clear error without a runtime, the right build command with one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.containers.conftest import REPO, SHIM_DIR

SCRIPT = str(REPO / "singularity" / "build-sif.sh")
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def build_sif(*args: str, path: str = BASE_PATH, archive_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
    if archive_dir is not None:
        env["R2I_ARCHIVE_DIR"] = str(archive_dir)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60)


def fake_runtime(tmp_path: Path, name: str) -> Path:
    """A fake `apptainer`/`singularity` on PATH that records its arguments (the boundary we cannot cross here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / name
    exe.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "{name} version 1.3.0"; exit 0; }}\necho "$@" > {tmp_path}/args\n'
    )
    exe.chmod(0o755)
    return bin_dir


def test_without_a_runtime_it_says_so_and_how_to_build_elsewhere() -> None:
    res = build_sif()
    assert res.returncode == 2, res.stderr
    assert "neither apptainer nor singularity is installed" in res.stderr
    assert "singularity build --build-arg archive=r2i-hpc-cpu.tar r2i-hpc-cpu.sif r2i.def" in res.stderr


def test_the_podman_shim_is_not_taken_for_a_runtime() -> None:
    res = build_sif("--variant", "gpu", path=f"{SHIM_DIR}:{BASE_PATH}")
    assert res.returncode == 2 and "neither apptainer nor singularity" in res.stderr, res.stderr


def test_missing_archive_names_make_docker(tmp_path: Path) -> None:
    bin_dir = fake_runtime(tmp_path, "apptainer")
    res = build_sif(path=f"{bin_dir}:{BASE_PATH}", archive_dir=tmp_path / "nothing-here")
    assert res.returncode == 2 and "run `make docker IMAGE_VARIANT=cpu` first" in res.stderr, res.stderr


def test_builds_from_the_def_file_with_the_archive_argument(tmp_path: Path) -> None:
    bin_dir = fake_runtime(tmp_path, "singularity")
    (tmp_path / "r2i-hpc-gpu.tar").write_bytes(b"archive")
    res = build_sif("--variant", "gpu", path=f"{bin_dir}:{BASE_PATH}", archive_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args").read_text().split()
    assert args == [
        "build",
        "--force",
        "--build-arg",
        f"archive={tmp_path}/r2i-hpc-gpu.tar",
        f"{tmp_path}/r2i-hpc-gpu.sif",
        "singularity/r2i.def",
    ], args
