"""The learning curves of the README come from `bench.learn` recipes, which are experiments: the benchmark composes
them through hydra like `make submit`, changing only what is not part of the trajectory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from bench.learn import RECIPES, compose_exp
from orchestrator.compose import compose_runs

# counters that do not change the trajectory (when to commit and log is not part of it)
NOT_TRAJECTORY = {"commit_every_min", "log_every"}
# Each recipe's composed config from when bench.learn built its own tree beside hydra's
GOLDEN = Path(__file__).parent / "golden" / "learn_recipes.json"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_composes_what_it_did_and_trains_what_make_submit_trains(recipe):
    exp = RECIPES[recipe]["exp"]
    bench = compose_exp(exp, [], seed=0)
    text = json.dumps(dataclasses.asdict(bench), sort_keys=True, default=str)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == json.loads(GOLDEN.read_text())[recipe], recipe
    run = compose_runs(exp, [0], [], "local")[0].cfg
    assert run.agent == bench.agent
    assert run.env == bench.env
    for f in dataclasses.fields(bench.train):
        if f.name not in NOT_TRAJECTORY:
            assert getattr(run.train, f.name) == getattr(bench.train, f.name), f.name
    assert run.replay == bench.replay
