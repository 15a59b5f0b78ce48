"""The learning curves of the README come from `bench.learn` recipes; the experiments that reproduce them through
`make submit` must describe the same training (same agent, env and trajectory-shaping loop counters)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.learn import RECIPES, compose
from orchestrator.compose import compose_runs

# counters that do not change the trajectory (when to commit and log is not part of it)
NOT_TRAJECTORY = {"commit_every_min", "log_every"}


@pytest.mark.parametrize(("recipe", "exp"), [("tmaze_passive_L20", "tmaze20")])
def test_recipe_and_experiment_train_the_same_thing(recipe, exp):
    r = RECIPES[recipe]
    bench = compose(r["agent"], r["env"], r["steps"], r["set"], seed=0)
    run = compose_runs(exp, [0], [], "local")[0].cfg
    assert run.agent == bench.agent
    assert run.env == bench.env
    for f in dataclasses.fields(bench.train):
        if f.name not in NOT_TRAJECTORY:
            assert getattr(run.train, f.name) == getattr(bench.train, f.name), f.name
    for f in ("capacity", "chunk", "inner"):
        assert getattr(run.replay, f) == getattr(bench.replay, f), f
