"""Compose one validated config per run from `experiments/` with hydra's compose API and override grammar.

`EXP` picks `experiments/exp/<EXP>.yaml`, `PROFILE` picks `slurm/profiles/<PROFILE>.yaml` (registered as the
`cluster` group), `ARGS` are hydra overrides; a sweep override (`agent.model_opt.lr=1e-4,3e-4`, `seed=0,1`,
`range(...)`, `choice(...)`) multiplies runs like `--multirun` does, crossed with `SEEDS`.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import (
    EXPERIMENTS_DIR,
    PROFILES_DIR,
    ConfigError,
    OrchestratorError,
    RootConfig,
    schema,
    validate,
)


class ComposeError(OrchestratorError, ValueError):
    """Bad experiment name, profile or override; carries hydra's message."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its folder name, the overrides that made it, and its validated config."""

    name: str
    overrides: tuple[str, ...]
    cfg: RootConfig


def available(folder: Path) -> list[str]:
    """Names of the YAML files in `folder` (experiments or profiles), sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _register(profiles_dir: Path) -> None:
    cs = ConfigStore.instance()
    # experiments/config.yaml composes over the structured schema, so an override of a key no YAML mentions
    # works and an unknown key fails inside hydra with its own message.
    cs.store(name="r2i_schema", node=schema())
    for name in available(profiles_dir):
        cs.store(group="cluster", name=name, node=OmegaConf.load(profiles_dir / f"{name}.yaml"))


def split_args(args: str | list[str]) -> list[str]:
    """`ARGS="a=1 b=x,y"` as a list of overrides (shell quoting honoured)."""
    return shlex.split(args) if isinstance(args, str) else list(args)


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of sweep overrides, as plain override lists (hydra's BasicSweeper semantics)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ComposeError(f"bad override: {e}") from e
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*axes)]


def _short(override: str) -> str:
    key, _, value = override.partition("=")
    key = key.lstrip("+~").split(".")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{key}-{value}").strip("-")


def _run_names(variants: list[list[str]], seeds: list[int]) -> list[str]:
    """`<key>-<value>_..._s<seed>` from the overrides that differ between runs; unique."""
    varying = [i for i in range(len(variants[0])) if len({v[i] for v in variants}) > 1]
    names = ["_".join([_short(v[i]) for i in varying if not v[i].startswith("seed=")] + [f"s{seed}"])
             for v, seed in zip(variants, seeds, strict=True)]
    if len(set(names)) < len(names):
        names = [f"r{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def compose_runs(
    exp: str,
    seeds: list[int] | None = None,
    args: str | list[str] = (),
    profile: str = "local",
    experiments_dir: Path = EXPERIMENTS_DIR,
    profiles_dir: Path = PROFILES_DIR,
) -> list[RunSpec]:
    """Compose and validate every run of `exp` x `seeds` x sweep overrides; nothing is written."""
    exps = available(experiments_dir / "exp")
    env_of = ""
    if exp not in exps:
        # an env of popgym or mmaze names its experiment: EXP=mmaze9x9 is EXP=mmaze ARGS="env=mmaze9x9"
        base = [e for e in exps if exp.startswith(e) and exp in available(experiments_dir / "env")
                and "/env: ???" in (experiments_dir / "exp" / f"{e}.yaml").read_text()]
        if not base:
            raise ComposeError(f"unknown experiment {exp!r}; available: {', '.join(exps)}")
        env_of, exp = exp, base[0]
    profiles = available(profiles_dir)
    if profile not in profiles:
        raise ComposeError(f"unknown cluster profile {profile!r}; available: {', '.join(profiles)}")
    user = split_args(args)
    if seeds:
        user = [o for o in user if not o.startswith("seed=")] + ["seed=" + ",".join(str(s) for s in seeds)]
    variants = expand_sweeps(user)
    base = [f"exp={exp}", f"cluster={profile}", f"run.exp={env_of or exp}"]
    if env_of and not any(o.split("=", 1)[0].lstrip("+~") == "env" for o in user):
        base.append(f"env={env_of}")
    _register(profiles_dir)
    runs = []
    with initialize_config_dir(config_dir=str(experiments_dir.resolve()), version_base="1.3", job_name="r2i"):
        for variant in variants:
            try:
                composed = compose(config_name="config", overrides=base + variant)
            except (HydraException, OmegaConfBaseException) as e:
                cause = f" ({str(e.__cause__).splitlines()[0]})" if e.__cause__ else ""
                raise ComposeError(f"{type(e).__name__}: {e}{cause}") from e
            try:
                runs.append(validate(composed))
            except ConfigError as e:
                raise ComposeError(f"{' '.join(variant) or exp}: {e}") from e
    names = _run_names(variants, [cfg.seed for cfg in runs])
    return [RunSpec(name=n, overrides=tuple(v), cfg=c) for n, v, c in zip(names, variants, runs, strict=True)]
