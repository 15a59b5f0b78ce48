"""singularity/r2i.def, docker/Dockerfile, docker/build-podman.sh and the shim name the same image (no podman)."""

from __future__ import annotations

import json
import re
import tomllib

from tests.containers.conftest import REPO, SHIM_DIR, image_settings

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
BUILD = (REPO / "docker" / "build-podman.sh").read_text()
DEF = (REPO / "singularity" / "r2i.def").read_text()


def def_sections() -> dict[str, list[str]]:
    """r2i.def as {"header": lines, "%arguments": lines, ...}, comments and blank lines dropped."""
    out: dict[str, list[str]] = {"header": []}
    current = "header"
    for raw in DEF.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("%"):
            current = line.split()[0]
            out[current] = []
        else:
            out[current].append(line)
    return out


def dockerfile_instructions(keyword: str) -> list[str]:
    """Arguments of every KEYWORD instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", joined, re.MULTILINE)]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for args in dockerfile_instructions("ENV"):
        env.update(dict(kv.split("=", 1) for kv in args.split()))
    return env


def test_def_bootstraps_from_the_archive_the_build_script_writes() -> None:
    s, names = def_sections(), image_settings()
    header = dict(line.split(":", 1) for line in s["header"])
    assert {k: v.strip() for k, v in header.items()} == {"Bootstrap": "docker-archive", "From": "{{ archive }}"}
    assert s["%arguments"] == [f"archive={names['ARCHIVE_DIR']}/r2i-hpc-cpu.tar"]
    assert 'archive_path="$root/$ARCHIVE_DIR/r2i-hpc-$variant.tar"' in BUILD
    assert 'image="$IMAGE_NAME:$variant"' in BUILD
    assert f"r2i.image {names['IMAGE_NAME']}" in s["%labels"]


def test_runscript_is_the_dockerfile_entrypoint() -> None:
    (entrypoint,) = dockerfile_instructions("ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form, or json.loads fails
    assert def_sections()["%runscript"] == [f'exec {" ".join(argv)} "$@"']


def test_def_environment_agrees_with_the_image_env() -> None:
    env = dockerfile_env()
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert {"MUJOCO_GL", "PYOPENGL_PLATFORM", "PYTHONUNBUFFERED", "R2I_IMAGE_VARIANT"} <= set(env)
    for line in def_sections()["%environment"]:
        verb, *names = line.split()
        assert verb == "unset", f"r2i.def %environment may only unset host leaks; found {line!r}"
        assert not set(names) & set(env), f"r2i.def unsets {names} that the Dockerfile sets"


def test_def_self_test_imports_what_the_container_tests_import() -> None:
    assert def_sections()["%test"] == ["python -c 'import agent, buffer, orchestrator, jax, zarr'"]


def test_image_installs_every_project_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copies = dockerfile_instructions("COPY")
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    for pkg in packages:
        assert f"{pkg} /tmp/src/{pkg}" in copies, f"docker/Dockerfile does not COPY package {pkg}"
        assert f"!{pkg}/" in ignore, f"docker/Dockerfile.dockerignore hides package {pkg}"
    assert "requirements.lock docker/requirements-cuda12.lock /tmp/locks/" in copies


def test_build_script_passes_every_build_arg_the_dockerfile_declares() -> None:
    declared = {a.split("=")[0] for a in dockerfile_instructions("ARG")}
    assert declared == {"BASE", "VARIANT"}
    assert '--build-arg BASE="$BASE_IMAGE"' in BUILD and '--build-arg VARIANT="$variant"' in BUILD
    assert "--secret id=hostca," in BUILD and "--mount=type=secret,id=hostca" in DOCKERFILE


def test_shim_examples_name_the_built_image() -> None:
    shim = (SHIM_DIR / "shim.py").read_text()
    names = image_settings()
    assert f'EXAMPLE_IMAGE = "docker-daemon://{names["IMAGE_NAME"]}:cpu"' in shim
    assert f"{names['ARCHIVE_DIR']}/r2i-hpc-cpu.tar" in shim
