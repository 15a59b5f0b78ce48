"""The learning curves of the README come from `bench.learn` recipes, which are experiments: the benchmark composes
them through hydra like `make submit`, changing only what is not part of the trajectory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from bench.learn import RECIPES, compose_exp
from bench.learn_seeds import judge
from orchestrator.compose import compose_runs

# counters that do not change the trajectory (when to commit and log is not part of it)
NOT_TRAJECTORY = {"commit_every_min", "log_every"}
# Each recipe's composed config, as recorded in bench/results: a recipe change must update it and re-run the
# curves the README shows
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


def _result(successes: list[float], target: float | None = 0.95) -> dict:
    rows = [{"env_steps": 2000 * (i + 1), "episode/success": s} for i, s in enumerate(successes)]
    return {"name": "r", "metric": "episode/success", "target": target, "curve": rows, "wall_time_s": 60.0}


def test_a_seed_learns_only_when_the_target_holds_over_the_last_steps():
    # 10 rows of 2k steps: the last 20k steps are rows 1-10 here, the last 6k rows 8-10
    touched_once = _result([0.0, 0.5, 0.96, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    v = judge(touched_once, seed=3, hold=6000)
    assert (v.first_reached, v.hold_mean, v.hold_min, v.learned, v.env_steps) == (6000, 0.9, 0.9, False, 20000)
    held = _result([0.0, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0])
    v = judge(held, seed=3, hold=6000)
    assert (v.first_reached, v.hold_mean, v.hold_min, v.learned) == (18000, 0.9667, 0.9, True)
    with pytest.raises(AssertionError, match="no target"):
        judge(_result([1.0], target=None), seed=0, hold=2000)
