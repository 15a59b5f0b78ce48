"""The validated config tree: `seed, agent, env, train, replay, wandb, eval` (the agent's part), `run`, `cluster`.

Every section is a dataclass; `validate` merges a composed hydra config into the structured schema, so unknown
keys and wrong types are errors naming the key, and the sections' own `__post_init__` checks run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agent.config import structured_schema
from agent.run_config import AgentRunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# `${repo:}` in a profile or experiment: this checkout, so paths to its build outputs never depend on the cwd.
OmegaConf.register_new_resolver("repo", lambda: str(REPO_ROOT), replace=True)
# overridable so a project can keep its experiments and profiles outside the checkout
EXPERIMENTS_DIR = Path(os.environ.get("R2I_EXPERIMENTS_DIR") or REPO_ROOT / "experiments")
PROFILES_DIR = Path(os.environ.get("R2I_PROFILES_DIR") or REPO_ROOT / "slurm" / "profiles")


class OrchestratorError(Exception):
    """Base of every error the orchestrator reports to the user (one line, names the thing at fault)."""


class ConfigError(OrchestratorError, ValueError):
    """The composed config does not validate."""


@dataclass(frozen=True)
class ContainerConfig:
    """Run the job in `image` (a .sif file) via `<runtime> exec --nv --bind ...`; empty: no container."""

    image: str = ""
    runtime: str = "singularity"  # apptainer works the same way
    python: str = "python"  # the interpreter inside the image
    binds: list[str] = field(default_factory=list)  # host paths to bind besides run root, scratch, durable
    nv: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    """One cluster profile (slurm/profiles/<name>.yaml)."""

    kind: str = "local"  # local | slurm
    partition: str = ""
    qos: str = ""
    account: str = ""
    constraint: str = ""  # pins a node type, so bits stay the same across requeues
    time_min: int = 60  # Slurm time limit of one attempt
    cpus: int = 2
    gpus: int = 0
    mem_gb: float = 0.0  # 0: the partition's default
    signal_grace_s: int = 90  # USR2 this long before the time limit; the loop must commit within it
    max_requeues: int = 20  # requeues of one run (timeouts + preemptions + restarts), then REQUEUE_LIMIT
    scratch: str = "/tmp/r2i-scratch"  # node-local fast storage; a run uses <scratch>/<sweep>/<run>
    durable: str = ""  # durable store base URL (file path, file://, s3://...); "": <run folder>/durable
    container: ContainerConfig = field(default_factory=ContainerConfig)
    setup: list[str] = field(default_factory=list)  # shell lines before the step (module load ...)
    sbatch: dict[str, str] = field(default_factory=dict)  # extra #SBATCH flags, e.g. {exclude: node3}

    def __post_init__(self) -> None:
        if self.kind not in ("local", "slurm"):
            raise ConfigError(f"cluster.kind={self.kind!r} must be 'local' or 'slurm'")
        if self.time_min < 1 or self.cpus < 1 or self.gpus < 0 or self.max_requeues < 0:
            raise ConfigError(
                f"cluster: time_min={self.time_min}, cpus={self.cpus}, gpus={self.gpus}, "
                f"max_requeues={self.max_requeues} out of range")
        if not 0 < self.signal_grace_s < self.time_min * 60:
            raise ConfigError(
                f"cluster.signal_grace_s={self.signal_grace_s} must be in "
                f"(0, time_min*60={self.time_min * 60})")


@dataclass(frozen=True)
class RunConfig:
    """Where sweeps live and what the job calls."""

    root: str = ""  # sweeps root; "": <repo>/runs
    entry: str = "agent.train:train"  # module:function, f(AgentRunConfig, RunContext) -> "done" | "stopped"
    exp: str = ""  # the experiment this run was composed from (set by the orchestrator)


@dataclass(frozen=True)
class RootConfig(AgentRunConfig):
    """The whole tree: what the training loop sees (`seed, agent, env, train, replay, wandb, eval`) plus `run` and
    `cluster`."""

    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def schema() -> DictConfig:
    """The structured schema of `RootConfig`, writable, still rejecting unknown keys and wrong types."""
    return structured_schema(RootConfig)


def validate(cfg: DictConfig | dict) -> RootConfig:
    """Merge `cfg` into the schema and build the dataclasses; raises ConfigError with OmegaConf's message."""
    if isinstance(cfg, DictConfig):  # a plain tree, so keys hydra appended with `+` meet the schema too
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(schema(), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]} (at {e.full_key})") from e
    except ValueError as e:  # the sections' __post_init__ checks
        raise ConfigError(f"invalid config: {e}") from e


def to_yaml(cfg: RootConfig) -> str:
    """The resolved tree as YAML (what a run folder's config.yaml holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def load_run_config(path: str | Path) -> RootConfig:
    """Read and validate a run folder's config.yaml."""
    return validate(OmegaConf.load(path))


def agent_run_config(cfg: RootConfig) -> AgentRunConfig:
    """The part of the tree the training entry receives (agent/run_config.py)."""
    return AgentRunConfig(**{f.name: getattr(cfg, f.name) for f in fields(AgentRunConfig)})
