"""The `singularity exec` podman shim: argument translation (dry runs, no podman needed) and a real exec."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.containers.conftest import REPO, SHIM_DIR, image_settings, podman, podman_env

SHIM = str(SHIM_DIR / "singularity")
# Dry runs never inspect it: SINGULARITY_SHIM_IMAGE_ENV stands in for its ENV.
NO_IMAGE = "docker-daemon://localhost/r2i-shim-test-no-such-image:x"


def shim(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, dry: bool = True
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": "/root", "SINGULARITY_SHIM_IMAGE_ENV": '{"MUJOCO_GL": "osmesa"}'}
    full = {**base, **(env or {}), **({"SINGULARITY_SHIM_DRY_RUN": "1"} if dry else {})}
    return subprocess.run([SHIM, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=120)


def translate(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    res = shim(*args, env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_binds_follow_singularity_grammar(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    argv = translate("exec", "--bind", f"{a},{b}:/data:ro", "-B", f"{a}:/x", NO_IMAGE, "python", "-V", cwd=tmp_path)
    vols = [x for x in argv if x.startswith("--volume=")]
    assert vols[-3:] == [f"--volume={a}:{a}", f"--volume={b}:/data:ro", f"--volume={a}:/x"], vols
    assert argv[-4:] == ["--entrypoint", '["python"]', "localhost/r2i-shim-test-no-such-image:x", "-V"], argv


def test_default_mode_shares_host_namespaces_home_tmp_cwd_and_environment(tmp_path: Path) -> None:
    argv = translate(
        "exec",
        NO_IMAGE,
        "python",
        env={
            "SLURM_JOB_ID": "42",
            "R2I_FACTS_FILE": "/f",
            "VIRTUAL_ENV": "/host/venv",
            "PYTHONPATH": "/host",
            "MUJOCO_GL": "glfw",
        },
        cwd=tmp_path,
    )
    for flag in (
        "--pid=host",
        "--ipc=host",
        "--network=host",
        "--volume=/root:/root",
        "--volume=/tmp:/tmp",
        f"--volume={tmp_path}:{tmp_path}",
        f"--workdir={tmp_path}",
        "--env=SLURM_JOB_ID=42",
        "--env=R2I_FACTS_FILE=/f",
        "--label=r2i.shim.slurm_job_id=42",
        f"--user={os.getuid()}:{os.getgid()}",
    ):
        assert flag in argv, (flag, argv)
    # host leaks dropped; a variable the image sets keeps the image's value, as in singularity
    dropped = ("--env=VIRTUAL_ENV", "--env=PYTHONPATH", "--env=PATH", "--env=MUJOCO_GL")
    assert not [x for x in argv if x.startswith(dropped)], argv
    assert "--init" not in argv  # podman refuses an init process in the host PID namespace


def test_containall_cleans_environment_and_isolates(tmp_path: Path) -> None:
    argv = translate(
        "exec",
        "--containall",
        "--bind",
        str(tmp_path),
        NO_IMAGE,
        "python",
        env={"SLURM_JOB_ID": "7", "SINGULARITYENV_R2I_X": "1", "APPTAINERENV_R2I_Y": "2"},
    )
    envs = sorted(x for x in argv if x.startswith("--env="))
    assert envs == ["--env=HOME=/root", "--env=R2I_X=1", "--env=R2I_Y=2"], envs
    assert {"--init", "--ipc=private", "--tmpfs=/root", f"--volume={tmp_path}:{tmp_path}"} <= set(argv), argv
    assert not [x for x in argv if x in ("--pid=host", "--volume=/tmp:/tmp")], argv


def test_nv_without_gpu_warns_like_singularity() -> None:
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA device")
    res = shim("exec", "--nv", NO_IMAGE, "python")
    assert res.returncode == 0 and "Could not find any nv files on this host" in res.stderr, res.stderr
    assert not [x for x in json.loads(res.stdout) if "nvidia" in x]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", NO_IMAGE], "only `exec` is supported"),
        (["exec", "--writable", NO_IMAGE, "python"], "unsupported option '--writable'"),
        (["exec", NO_IMAGE], "missing IMAGE or COMMAND"),
        (["exec", "--bind", "/tmp:rel", NO_IMAGE, "python"], "must be an absolute path"),
        (["exec", "--bind", "/tmp:/x:rx", NO_IMAGE, "python"], "bad --bind option 'rx'"),
        (["exec", "--bind", "/no/such/dir", NO_IMAGE, "python"], "bind source '/no/such/dir' does not exist"),
        (["exec", "/project/r2i.sif", "python"], "not SIF files"),
    ],
)
def test_bad_usage_is_one_clear_error(args: list[str], message: str) -> None:
    res = shim(*args)
    assert res.returncode == 255 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_a_file_that_is_not_a_docker_archive_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "image.tar"
    bogus.write_bytes(b"not a tar")
    res = shim("exec", str(bogus), "python")
    assert res.returncode == 255 and "is not a docker archive" in res.stderr, res.stderr


@pytest.mark.container
def test_exec_binds_a_folder_runs_as_caller_and_returns_the_exit_status(image: str, tmp_path: Path) -> None:
    code = "import os, sys; open('/data/out.txt', 'w').write(f'{os.getuid()} {sys.executable}'); sys.exit(7)"
    argv = [SHIM, "exec", "--bind", f"{tmp_path}:/data", f"docker-daemon://{image}", "python", "-c", code]
    res = subprocess.run(argv, capture_output=True, text=True, env=podman_env(), timeout=120)
    assert res.returncode == 7, res.stderr
    assert (tmp_path / "out.txt").read_text() == f"{os.getuid()} /opt/venv/bin/python"


@pytest.mark.container
def test_the_docker_archive_make_sif_converts_is_the_image_and_runs(image: str) -> None:
    """build/r2i-hpc-cpu.tar is what `make sif` turns into the SIF, and a plain file path the orchestrator's
    preflight accepts: the shim runs it without reloading when podman already holds that image id."""
    archive = REPO / image_settings()["ARCHIVE_DIR"] / "r2i-hpc-cpu.tar"
    image_id = podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    argv = translate("exec", str(archive), "python", "-V")
    assert argv[-2:] == [image_id, "-V"], (argv[-2:], image_id)
    res = subprocess.run([SHIM, "exec", str(archive), "python", "-V"], capture_output=True, text=True, env=podman_env())
    assert (res.returncode, res.stdout.strip()) == (0, "Python 3.11.2"), res


@pytest.mark.container
def test_an_image_podman_does_not_hold_is_one_clear_error(image: str) -> None:
    res = shim("exec", "docker-daemon://localhost/r2i-no-such-image:x", "python", dry=False, env=podman_env())
    assert res.returncode == 255 and "not found in podman's storage" in res.stderr, res.stderr


@pytest.mark.container
def test_sigkilled_shim_leaves_its_container_and_the_slurm_epilog_removes_it(image: str) -> None:
    """The documented gap of the double: SIGKILL of the podman client orphans the container (conmon keeps it);
    podman-shim/slurm-epilog.sh, run by slurmd after the job, removes it by the job-id label."""
    job = f"shimtest{os.getpid()}"
    env = {**podman_env(), "SLURM_JOB_ID": job}
    label = f"label=r2i.shim.slurm_job_id={job}"
    proc = subprocess.Popen([SHIM, "exec", f"docker-daemon://{image}", "sleep", "300"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not podman("ps", "-q", "--filter", label).stdout.strip():
            assert time.monotonic() < deadline and proc.poll() is None, "the shim's container never started"
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=30)
        assert podman("ps", "-q", "--filter", label).stdout.strip(), "expected the orphaned container to live on"
        epilog = subprocess.run([str(SHIM_DIR / "slurm-epilog.sh")], env=env, capture_output=True, text=True)
        assert epilog.returncode == 0, epilog.stderr
        assert podman("ps", "-aq", "--filter", label).stdout.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        for cid in podman("ps", "-aq", "--filter", label, check=False).stdout.split():
            podman("rm", "-f", cid, check=False)
