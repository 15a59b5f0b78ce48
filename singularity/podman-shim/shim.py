"""A `singularity exec` test double that runs the image with podman.

Singularity/Apptainer cannot be installed on the project machines, podman can (see docker/build-podman.sh). So
that the dev cluster runs jobs inside the real project image, this translates the subset the orchestrator uses,

    singularity exec [--nv] [-B|--bind SRC[:DST[:ro|rw]][,...]]... [-C|--containall] IMAGE CMD [ARGS...]

into `podman run` with the nearest equivalent flags, then execs podman (whose --sig-proxy forwards every
catchable signal, so Slurm's USR2/TERM reach the process inside). It is NOT singularity: the image must be a
docker archive (`build/r2i-hpc-cpu.tar`, `docker-archive://...`) or a podman image (`docker-daemon://REF`),
never a .sif; see singularity/README.md for what differs. Stdlib only: it runs with the host's python3.

Environment: SINGULARITY_SHIM_DRY_RUN=1 prints the podman argv as JSON instead of running it (with
SINGULARITY_SHIM_IMAGE_ENV='{"K": "V"}' standing in for the image's ENV, podman is then not called at all);
CONTAINERS_CONF defaults to docker/containers.conf (runc, low ulimits: what works here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

PROG = "singularity (podman shim)"
VERSION = "podman-shim 0.1 (test double for singularity exec; not singularity)"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_IMAGE = "docker-daemon://localhost/r2i-hpc:cpu"
# Host variables never passed in: the image's own values must win, as r2i.def's %environment arranges.
HOST_ONLY = {
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "HOSTNAME",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "PS1",
    "CONTAINERS_CONF",
    "XDG_RUNTIME_DIR",
}
ENV_PREFIXES = ("SINGULARITYENV_", "APPTAINERENV_")


class ShimError(Exception):
    """Bad usage or an image the shim cannot run; exit status 255 like singularity."""


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    ro: bool


@dataclass
class ExecRequest:
    image: str
    command: list[str]
    binds: list[Bind] = field(default_factory=list)
    nv: bool = False
    containall: bool = False


def parse_binds(spec: str) -> list[Bind]:
    """`a,b:/c:ro` -> [Bind(a, a, rw), Bind(b, /c, ro)] (singularity's --bind grammar)."""
    out = []
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        if len(parts) > 3 or not parts[0]:
            raise ShimError(f"bad --bind entry {item!r}: expected SRC[:DST[:ro|rw]]")
        src, dst = parts[0], parts[1] if len(parts) > 1 and parts[1] else parts[0]
        opt = parts[2] if len(parts) == 3 else "rw"
        if opt not in ("ro", "rw"):
            raise ShimError(f"bad --bind option {opt!r} in {item!r}: only ro and rw are supported")
        if not os.path.isabs(dst):
            raise ShimError(f"bad --bind destination {dst!r} in {item!r}: must be an absolute path")
        out.append(Bind(os.path.abspath(src), dst, opt == "ro"))
    return out


def parse_args(argv: list[str]) -> ExecRequest:
    """Parse `exec [options] IMAGE CMD...`; anything outside the supported subset is a ShimError."""
    if not argv or argv[0] != "exec":
        raise ShimError(f"only `exec` is supported (got {argv[:1] or 'nothing'}); usage: {usage()}")
    binds: list[Bind] = []
    nv = containall = False
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a == "--nv":
            nv = True
        elif a in ("-C", "--containall"):
            containall = True
        elif a in ("-B", "--bind"):
            if i + 1 >= len(argv):
                raise ShimError(f"{a} needs a value")
            i += 1
            binds += parse_binds(argv[i])
        elif a.startswith("--bind="):
            binds += parse_binds(a.split("=", 1)[1])
        else:
            raise ShimError(
                f"unsupported option {a!r}; this test double supports --nv, --bind/-B, --containall/-C only"
            )
        i += 1
    if len(argv) - i < 2:
        raise ShimError(f"missing IMAGE or COMMAND; usage: {usage()}")
    return ExecRequest(argv[i], argv[i + 1 :], binds, nv, containall)


def usage() -> str:
    return "singularity exec [--nv] [--bind SRC[:DST[:ro]],...] [--containall] IMAGE CMD [ARGS...]"


def archive_image_id(path: Path) -> str:
    """Image id (config digest) of a docker archive, read from its manifest.json without unpacking."""
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None, f"manifest.json in {path} is not a file"
            manifest = json.load(member)
    except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError) as e:
        raise ShimError(
            f"{path} is not a docker archive ({e}); only docker archives and podman images "
            f"run here, e.g. {EXAMPLE_IMAGE}"
        ) from e
    config = manifest[0]["Config"]  # "<hex>.json" (docker) or "blobs/sha256/<hex>" (OCI layout)
    return Path(config).name.removesuffix(".json")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def resolve_image(image: str, *, load: bool) -> str:
    """A podman image reference for IMAGE; a docker archive is loaded once (its id is the cache key)."""
    if image.startswith("docker-daemon://"):
        return image.removeprefix("docker-daemon://")
    path = Path(image.removeprefix("docker-archive://"))
    if image.endswith(".sif") or not path.is_file():
        raise ShimError(
            f"cannot run {image!r}: this podman test double runs docker archives "
            f"(build/r2i-hpc-cpu.tar) or podman images ({EXAMPLE_IMAGE}), not SIF files"
        )
    image_id = archive_image_id(path)  # a docker archive: loaded at most once
    if load and podman("image", "exists", image_id, check=False).returncode != 0:
        res = podman("load", "-q", "-i", str(path), check=False)
        if res.returncode != 0:
            raise ShimError(f"podman load -i {path} failed: {res.stderr.strip()}")
    return image_id


def image_env(ref: str) -> dict[str, str]:
    """The image's ENV; empty when podman cannot inspect it (dry runs without the image)."""
    if "SINGULARITY_SHIM_IMAGE_ENV" in os.environ and os.environ.get("SINGULARITY_SHIM_DRY_RUN") == "1":
        return json.loads(os.environ["SINGULARITY_SHIM_IMAGE_ENV"])
    if shutil.which("podman") is None:
        return {}
    res = podman("image", "inspect", "--format", "{{json .Config.Env}}", ref, check=False)
    if res.returncode != 0:
        return {}
    return dict(kv.split("=", 1) for kv in json.loads(res.stdout or "[]") or [] if "=" in kv)


def container_env(host: dict[str, str], img_env: dict[str, str], containall: bool) -> dict[str, str]:
    """What singularity passes in: the host environment (none with --containall) minus what the image sets,
    plus SINGULARITYENV_X / APPTAINERENV_X as X, which always win."""
    env = {}
    if not containall:
        env = {
            k: v
            for k, v in host.items()
            if k not in HOST_ONLY
            and k not in img_env
            and not k.startswith(ENV_PREFIXES)
            and not k.startswith("BASH_FUNC_")
        }
    for k, v in host.items():
        for prefix in ENV_PREFIXES:
            if k.startswith(prefix) and len(k) > len(prefix):
                env[k.removeprefix(prefix)] = v
    return env


def nv_flags() -> list[str]:
    """GPU flags for --nv: CDI devices where the NVIDIA toolkit generated a spec; a warning without GPUs."""
    if not Path("/dev/nvidiactl").exists():
        print("WARNING: Could not find any nv files on this host!", file=sys.stderr)
        return []
    if any(Path(d, "nvidia.yaml").exists() or Path(d, "nvidia.json").exists() for d in ("/etc/cdi", "/var/run/cdi")):
        return ["--device", "nvidia.com/gpu=all"]
    raise ShimError("--nv on a GPU host needs a CDI spec (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml)")


def podman_argv(
    req: ExecRequest, ref: str, img_env: dict[str, str], host: dict[str, str], cwd: str, uid: int, gid: int
) -> list[str]:
    """The `podman run` command line equivalent to REQ (apart from the tty and GPU probes, a pure function)."""
    argv = ["podman", "run", "--rm", "--pull=never", "--network=host", f"--user={uid}:{gid}", "--label=r2i.shim=1"]
    if host.get("SLURM_JOB_ID"):
        # lets a Slurm epilog remove containers a SIGKILL'd job left behind (podman-shim/slurm-epilog.sh)
        argv.append(f"--label=r2i.shim.slurm_job_id={host['SLURM_JOB_ID']}")
    argv.append("--interactive")  # singularity passes stdin through
    if sys.stdin.isatty() and sys.stdout.isatty():
        argv.append("--tty")
    home = host.get("HOME", "/root")
    if req.containall:
        # --containall: private PID/IPC namespaces (catatonit as PID 1 forwards signals: a PID 1 without a
        # handler would ignore TERM), an empty home, no host /tmp or cwd
        argv += ["--init", "--ipc=private", f"--tmpfs={home}", f"--env=HOME={home}", f"--workdir={home}"]
    else:
        # default singularity: host PID/IPC namespaces; $HOME, /tmp and the cwd are bound
        argv += ["--pid=host", "--ipc=host", f"--env=HOME={home}"]
        seen = set()
        for p in (home, "/tmp", cwd):
            if p not in seen and os.path.isdir(p):
                argv.append(f"--volume={p}:{p}")
                seen.add(p)
        argv.append(f"--workdir={cwd}")
    for b in req.binds:
        argv.append(f"--volume={b.src}:{b.dst}" + (":ro" if b.ro else ""))
    if req.nv:
        argv += nv_flags()
    for k, v in sorted(container_env(host, img_env, req.containall).items()):
        argv.append(f"--env={k}={v}")
    # singularity exec ignores the image's entrypoint/runscript and runs CMD as given
    argv += ["--entrypoint", json.dumps(req.command[:1]), ref, *req.command[1:]]
    return argv


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["version"]):
        print(VERSION)
        return 0
    dry = os.environ.get("SINGULARITY_SHIM_DRY_RUN") == "1"
    try:
        req = parse_args(argv)
        for b in req.binds:
            if not os.path.exists(b.src):
                raise ShimError(f"bind source {b.src!r} does not exist")
        if not dry and shutil.which("podman") is None:
            raise ShimError("podman not found; install it with docker/build-podman.sh (or apt-get install podman runc)")
        os.environ.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))
        ref = resolve_image(req.image, load=not dry)
        if not dry and podman("image", "exists", ref, check=False).returncode != 0:
            raise ShimError(f"image {ref!r} not found in podman's storage; build it with `make docker`")
        cmd = podman_argv(
            req,
            ref,
            image_env(ref),
            dict(os.environ),
            os.getcwd(),
            os.getuid(),
            os.getgid(),
        )
    except ShimError as e:
        print(f"FATAL: {PROG}: {e}", file=sys.stderr)
        return 255
    if dry:
        print(json.dumps(cmd))
        return 0
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # podman takes our pid: signals sent to it are proxied into the container


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
