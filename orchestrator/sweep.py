"""The sweep folder: `<run.root>/<sweep>/` with `sweep.json` and one folder per run.

A run folder holds `config.yaml` (the composed, validated tree), `submissions.jsonl` (one line per submission
attempt: job id, cluster, time), `state.json` (written by the job: attempts, stops, final state), `logs/`
(metrics.jsonl, the Slurm/submitit output under logs/slurm/) and, for a local durable URL, `durable/`.
Every path comes from the config (`run.root`, `cluster.scratch`, `cluster.durable`), never from the cwd.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.compose import RunSpec
from orchestrator.config import REPO_ROOT, OrchestratorError, RootConfig, load_run_config, to_yaml


class SweepError(OrchestratorError):
    """A sweep folder that is missing, already exists, or does not match the request."""


def expand(path: str) -> str:
    """`$VAR` and `~` expanded (scratch and durable paths may name $USER, $TMPDIR, $SLURM_JOB_ID)."""
    return os.path.expanduser(os.path.expandvars(path))


def run_root(cfg_root: str = "") -> Path:
    """The sweeps root: `run.root` from the config, else `$R2I_RUN_ROOT`, else `<repo>/runs`."""
    root = cfg_root or os.environ.get("R2I_RUN_ROOT", "") or str(REPO_ROOT / "runs")
    return Path(expand(root)).resolve()


def is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files live (durable and scratch are unexpanded templates until `resolved`)."""

    run_dir: Path
    durable: str  # URL or path of the run's durable store
    scratch: str  # node-local folder of the run

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def slurm_dir(self) -> Path:
        return self.logs / "slurm"

    @property
    def state(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def submissions(self) -> Path:
        return self.run_dir / "submissions.jsonl"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics.jsonl"

    def resolved(self) -> RunPaths:
        return RunPaths(self.run_dir, expand(self.durable), expand(self.scratch))


def run_paths(cfg: RootConfig, sweep_dir: Path, run: str) -> RunPaths:
    """Paths of run `run` of the sweep in `sweep_dir` (under `run.root`), with `cfg`'s durable and scratch bases."""
    run_dir, sweep = sweep_dir / run, sweep_dir.name
    base = cfg.cluster.durable
    durable = str(run_dir / "durable") if not base else f"{base.rstrip('/')}/{sweep}/{run}"
    scratch = f"{cfg.cluster.scratch.rstrip('/')}/{sweep}/{run}"
    return RunPaths(run_dir, durable, scratch)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path` and rename it into place (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Request:
    """What the user asked for; the same request on an existing sweep resumes it."""

    exp: str
    seeds: list[int] | None
    args: list[str]
    profile: str


@dataclass
class Sweep:
    """A sweep folder on disk."""

    name: str
    dir: Path
    request: Request
    runs: list[str]

    def paths(self, run: str) -> RunPaths:
        return run_paths(self.config(run), self.dir, run)

    def config(self, run: str) -> RootConfig:
        return load_run_config(self.dir / run / "config.yaml")

    def submissions(self, run: str) -> list[dict]:
        f = self.dir / run / "submissions.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []

    def record_submission(self, run: str, job_id: str, cluster: str, **extra: Any) -> None:
        row = {"job_id": job_id, "cluster": cluster, "time": time.time(),
               "attempt": len(self.submissions(run)), **extra}
        with open(self.dir / run / "submissions.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def create_sweep(root: Path, name: str, request: Request, runs: list[RunSpec]) -> Sweep:
    """Make the sweep folder and its run folders; refuses an existing sweep name."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"sweep name {name!r} must be letters, digits, '.', '_' or '-'")
    sweep_dir = root / name
    if (sweep_dir / "sweep.json").exists():
        raise SweepError(f"sweep {name!r} already exists at {sweep_dir}; use `make resume SWEEP={name}` "
                         "or another SWEEP name")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for spec in runs:
        paths = run_paths(spec.cfg, sweep_dir, spec.name)
        paths.slurm_dir.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(to_yaml(spec.cfg))
        write_json_atomic(paths.run_dir / "run.json", {
            "name": spec.name, "overrides": list(spec.overrides), "durable": paths.durable,
            "scratch": paths.scratch})
    sweep = Sweep(name, sweep_dir, request, [s.name for s in runs])
    write_json_atomic(sweep_dir / "sweep.json", {
        "name": name, "request": asdict(request), "runs": sweep.runs, "created": time.time()})
    return sweep


def open_sweep(root: Path, name: str) -> Sweep:
    """Load an existing sweep; an unknown name lists the sweeps that exist."""
    meta = read_json(root / name / "sweep.json")
    if meta is None:
        known = sorted(p.parent.name for p in root.glob("*/sweep.json")) if root.exists() else []
        raise SweepError(f"no sweep {name!r} under {root}; sweeps: {', '.join(known) or 'none'}")
    return Sweep(name, root / name, Request(**meta["request"]), list(meta["runs"]))


def find_matching(root: Path, request: Request) -> Sweep | None:
    """The newest sweep made by exactly this request (so the same command again resumes it)."""
    if not root.exists():
        return None
    metas = [(read_json(p), p.parent.name) for p in root.glob("*/sweep.json")]
    same = [(m["created"], n) for m, n in metas if m and m.get("request") == asdict(request)]
    return open_sweep(root, max(same)[1]) if same else None
