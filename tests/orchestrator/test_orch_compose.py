"""Config composition from experiments/ with hydra, sweeps, and validation errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from orchestrator.compose import ComposeError, available, compose_runs, expand_sweeps
from orchestrator.config import EXPERIMENTS_DIR, ClusterConfig, ConfigError, validate

PAPER_POPGYM = [f"popgym_{t}{lvl}" for t in ("RepeatPrevious", "Autoencode", "Concentration")
                for lvl in ("Easy", "Medium", "Hard")]


MMAZE = [f"mmaze{n}x{n}" for n in (9, 11, 13, 15)]
# The composed config (without `run`) of each env's experiment from when every env had a file of its own
GOLDEN = Path(__file__).parent / "golden" / "env_experiments.json"


def _env_exp(env: str) -> str:
    return "popgym" if env.startswith("popgym_") else "mmaze"


def _digest(cfg) -> str:
    d = asdict(cfg)
    d.pop("run")  # the experiment's name, and the sweep root of whoever runs the test
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_every_shipped_experiment_composes_and_validates():
    """And each env of popgym and mmaze composes the config its own experiment file did when it had one."""
    exps = available(EXPERIMENTS_DIR / "exp")
    assert {"smoke", "tmaze", "tmaze20", "popgym", "mmaze"} <= set(exps)
    for exp in set(exps) - {"popgym", "mmaze"}:
        (run,) = compose_runs(exp, None, [], "local")
        assert run.cfg.run.exp == exp and run.cfg.cluster.kind == "local"
    golden = json.loads(GOLDEN.read_text())
    for env in PAPER_POPGYM + MMAZE:
        (run,) = compose_runs(_env_exp(env), None, [f"env={env}"], "local")
        cfg = run.cfg
        assert _digest(cfg) == golden[env], f"EXP={_env_exp(env)} env={env} composes another config than before"
        assert cfg.run.exp == _env_exp(env) and cfg.cluster.kind == "local"
        if env.startswith("popgym_"):
            assert cfg.env.kind == "popgym" and cfg.env.id == f"popgym-{env[len('popgym_'):]}-v0"
        else:
            assert cfg.env.kind == "mmaze" and cfg.env.id == env[len("mmaze"):]
    tmaze = compose_runs("tmaze", None, [], "local")[0].cfg.env
    assert tmaze.kind == "tmaze" and tmaze.id == "passive" and tmaze.memory_length >= 20


@pytest.mark.parametrize("exp", ["popgym", "mmaze"])
def test_an_env_experiment_without_its_env_names_the_choices(exp):
    with pytest.raises(ComposeError, match="You must specify 'env'"):
        compose_runs(exp, None, [], "local")


@pytest.mark.parametrize("env, exp", [("popgym_AutoencodeHard", "popgym"), ("mmaze9x9", "mmaze")])
def test_an_env_of_popgym_or_mmaze_names_its_experiment(env, exp):
    """EXP=mmaze9x9 composes EXP=mmaze ARGS="env=mmaze9x9" and keeps the short name for reports."""
    (short,) = compose_runs(env, None, ["train.steps=77"], "local")
    (full,) = compose_runs(exp, None, ["train.steps=77", f"env={env}"], "local")
    assert short.cfg.run.exp == env and full.cfg.run.exp == exp
    assert dataclasses.replace(short.cfg, run=full.cfg.run) == full.cfg
    assert short.name == full.name == "s0"


def test_seeds_times_sweep_values_give_one_run_each():
    runs = compose_runs("smoke", [0, 1], "agent.model_opt.lr=1e-4,3e-4 train.steps=77", "dev")
    assert [r.name for r in runs] == ["lr-0.0001_s0", "lr-0.0001_s1", "lr-0.0003_s0", "lr-0.0003_s1"]
    assert [(r.cfg.agent.model_opt.lr, r.cfg.seed) for r in runs] == [
        (1e-4, 0), (1e-4, 1), (3e-4, 0), (3e-4, 1)]
    assert {r.cfg.train.steps for r in runs} == {77}
    assert {r.cfg.cluster.partition for r in runs} == {"low"}  # the dev profile


def test_hydra_sweep_grammar_is_expanded():
    assert expand_sweeps(["a=1,2", "b=range(0,2)", "c=x"]) == [
        ["a=1", "b=0", "c=x"], ["a=1", "b=1", "c=x"], ["a=2", "b=0", "c=x"], ["a=2", "b=1", "c=x"]]


def test_unknown_experiment_lists_the_available_ones():
    with pytest.raises(ComposeError, match="unknown experiment 'nope'; available: learn, mmaze, popgym, popgym_small,"):
        compose_runs("nope", [0], [], "local")


def test_unknown_profile_lists_the_available_ones():
    available = "dev, dev-container, local, templ"
    with pytest.raises(ComposeError, match=rf"unknown cluster profile 'mars'; available: {available}"):
        compose_runs("smoke", [0], [], "mars")


@pytest.mark.parametrize("override, message", [
    ("agent.nope=1", r"Could not override 'agent.nope'"),
    ("+agent.nope=1", r"Key 'nope' not in 'AgentConfig'"),
    ("+nope=1", r"Key 'nope' not in 'RootConfig'"),
    ("agent.deter=abc", r"agent.deter=abc \(Value 'abc' of type 'str' could not be converted to Integer\)"),
    ("agent.deter=[1,2", r"bad override: no viable alternative at input"),
    ("env=nope", r"Could not find 'env/nope'"),
    ("cluster.time_min=0", r"time_min=0"),
    ("env.kind=zz", r"env.kind='zz' is unknown"),
    ("replay.codec=snappy", r"codec='snappy' is unknown; expected one of \['zstd', 'lz4'\]"),
    ("agent.act_explore=2", r"agent.act_explore=2.0 must be a probability"),
    ("agent.decoder=deconv", r"agent.decoder='deconv' must be one of \['pixel_shuffle', 'transpose'\]"),
    ("env.time_limit=cut", r"env.time_limit='cut' must be 'truncation' or 'terminal'"),
    ("cluster.kind=pbs", r"cluster.kind='pbs' must be 'local' or 'slurm'"),
])
def test_bad_overrides_fail_with_hydra_or_schema_message(override, message):
    with pytest.raises(ComposeError, match=message):
        compose_runs("smoke", [0], override, "dev")


def test_profiles_are_checked_against_the_schema(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: slurm\npartitionn: low\n")
    with pytest.raises(ComposeError, match="partitionn"):
        compose_runs("smoke", [0], [], "bad", profiles_dir=tmp_path)


def test_validate_rejects_signal_grace_beyond_the_time_limit():
    with pytest.raises(ConfigError, match=r"signal_grace_s=700 must be in \(0, time_min\*60=600\)"):
        validate({"cluster": {"time_min": 10, "signal_grace_s": 700}})
    assert ClusterConfig().kind == "local"


def test_the_root_config_repeats_no_dataclass_default():
    """One source per default: experiments/config.yaml holds only what the schema's dataclasses cannot."""
    from omegaconf import OmegaConf

    from orchestrator.config import RootConfig

    root = OmegaConf.load(EXPERIMENTS_DIR / "config.yaml")
    defaults = OmegaConf.structured(RootConfig)
    repeated = []
    for section in (k for k in root if k != "defaults"):
        for key, value in OmegaConf.to_container(root[section], resolve=False).items():
            if value == defaults[section][key]:
                repeated.append(f"{section}.{key}")
    assert repeated == [], f"experiments/config.yaml repeats the dataclass defaults of {repeated}"
