"""The project image, built for real with podman: imports, user, no Slurm client, signals, rendering, tests."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from tests.containers.conftest import REPO, SHIM_DIR, podman, podman_env

pytestmark = pytest.mark.container

# Waits for one signal, then exits 3 (the "please requeue me" status a job hands to the host side) or 1.
HANDLER = """
import signal, sys, time
got = []
for s in (signal.SIGUSR2, signal.SIGTERM):
    signal.signal(s, lambda n, f: got.append(n))
print("ready", flush=True)
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.02)
print("handled", signal.Signals(got[0]).name if got else "nothing", flush=True)
sys.exit(3 if got else 1)
"""

RENDER = """
import mujoco, numpy as np
m = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 3"/>'
    '<geom type="box" size=".3 .3 .3" rgba="1 0 0 1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
mujoco.mj_forward(m, d)
r = mujoco.Renderer(m, height=48, width=64)
r.update_scene(d)
img = r.render()
print(img.shape, img.dtype, int(img[..., 0].max()), float(img.std()))
"""


def test_default_command_imports_the_project(image: str) -> None:
    out = podman("run", "--rm", image).stdout
    assert "r2i-hpc image ok: 0.10.2 [CpuDevice(id=0)]" in out, out


def test_project_and_dependencies_import(image: str) -> None:
    code = (
        "import agent, buffer, orchestrator, jax, zarr, mujoco, dm_control, optax, flax, submitit; "
        "print(agent.__file__, zarr.__version__, jax.__version__)"
    )
    out = podman("run", "--rm", image, "-c", code).stdout.split()
    assert out[0].startswith("/opt/venv/lib/python3.11/site-packages/agent/"), out
    assert out[1:] == ["3.1.6", "0.10.2"], out


def test_runs_as_non_root_without_slurm_client(image: str) -> None:
    code = (
        "import os, shutil; print(os.getuid(), os.getgid(), os.environ['HOME'], "
        "[shutil.which(c) for c in ('scontrol', 'sbatch', 'srun', 'squeue')])"
    )
    out = podman("run", "--rm", image, "-c", code).stdout.strip()
    assert out == "1000 1000 /home/r2i [None, None, None, None]", out


def test_sigusr2_from_podman_kill_reaches_python_handler(image: str) -> None:
    name = f"r2i-sig-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, image, "-c", HANDLER)
    try:
        deadline = time.monotonic() + 60
        while "ready" not in podman("logs", name).stdout:
            assert time.monotonic() < deadline, f"no 'ready' from the container: {podman('logs', name).stdout}"
            time.sleep(0.1)
        podman("kill", "--signal", "USR2", name)
        status = podman("wait", name, timeout=60).stdout.strip()
        logs = podman("logs", name).stdout
    finally:
        podman("rm", "-f", name, check=False)
    assert (status, logs.splitlines()[-1]) == ("3", "handled SIGUSR2"), (status, logs)


@pytest.mark.parametrize(("containall", "sig", "name"), [(False, 12, "SIGUSR2"), (True, 15, "SIGTERM")])
def test_signal_to_singularity_shim_reaches_python_and_exit_status_comes_back(
    image: str, containall: bool, sig: int, name: str
) -> None:
    """What Slurm does on the dev cluster: orchestrator/step.sh starts the container command with USR2/TERM
    ignored and later signals it; the handler inside must run and its exit status must reach the host."""
    flags = ["--containall"] if containall else []
    cmd = [
        "sh",
        "-c",
        'trap "" USR2 TERM; exec "$@"',
        "sh",
        str(SHIM_DIR / "singularity"),
        "exec",
        *flags,
        f"docker-daemon://{image}",
        "python",
        "-c",
        HANDLER,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=podman_env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == "ready", (first, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, out.strip()) == (3, f"handled {name}"), (proc.returncode, out, err)


def test_mujoco_renders_headless_with_osmesa(image: str) -> None:
    out = podman("run", "--rm", image, "-c", RENDER).stdout.split()
    shape, dtype, red_max, std = " ".join(out[:3]), out[3], int(out[4]), float(out[5])
    assert (shape, dtype) == ("(48, 64, 3)", "uint8"), out
    assert red_max > 100 and std > 1.0, f"blank frame: red max {red_max}, std {std}"


def test_unit_test_subset_passes_inside(image: str) -> None:
    """The repo's tests against the image's installed packages: only tests/ and pyproject.toml are mounted, so
    `import buffer` resolves to /opt/venv, not to the checkout."""
    subset = os.environ.get(
        "R2I_CONTAINER_TESTS", "tests/buffer/test_buffer_exact.py tests/orchestrator/test_orch_job.py"
    ).split()
    for path in subset:
        assert (REPO / path).exists(), f"R2I_CONTAINER_TESTS names {path}, which does not exist"
    # experiments/ and the profiles are composed on the host in real use; the tests compose them inside
    mounts = ["--tmpfs", "/work:mode=1777", "-w", "/work"]
    for path in ("tests", "pyproject.toml", "experiments", "slurm/profiles"):
        mounts += ["-v", f"{REPO / path}:/work/{path}:ro"]
    mounts += ["-e", "R2I_EXPERIMENTS_DIR=/work/experiments", "-e", "R2I_PROFILES_DIR=/work/slurm/profiles"]
    where = podman("run", "--rm", *mounts, image, "-c", "import buffer, tests; print(buffer.__file__)").stdout
    assert where.startswith("/opt/venv/lib/python3.11/site-packages/buffer/"), where
    res = podman(
        "run", "--rm", *mounts, image, "-m", "pytest", "-q", "-p", "no:cacheprovider", *subset, timeout=600, check=False
    )
    assert res.returncode == 0, f"pytest inside the image failed:\n{res.stdout[-6000:]}\n{res.stderr[-2000:]}"
    assert " passed" in res.stdout, res.stdout[-2000:]
