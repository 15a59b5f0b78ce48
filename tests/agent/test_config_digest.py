"""The config digest guards a resume against another run's store; a knob added to the code later (at a default
that keeps the old behaviour) must not stop requeued jobs of running sweeps from resuming."""

from __future__ import annotations

import dataclasses

from agent.train import config_digest
from bench.learn import compose


def cfg(*overrides: str):
    return compose("tiny", "tmaze_passive", 3000, ["env.memory_length=5", *overrides], seed=0)


def test_the_digest_is_stable_across_releases():
    # golden value: changes only if a default or the digest's recipe changes (then runs of older code cannot resume)
    assert config_digest(cfg()) == "d9ee706cf110c8c9"


def test_fields_left_at_their_default_do_not_count_and_changed_ones_do():
    base = cfg()
    # an explicit default is the same trajectory as a knob the older code did not have
    assert config_digest(dataclasses.replace(base, env=dataclasses.replace(base.env, reward_scale=1.0))) == \
        config_digest(base)
    assert config_digest(cfg("env.penalty_rule=stall")) != config_digest(base)
    assert config_digest(cfg("agent.ssm.hidden=32")) != config_digest(base)
    assert config_digest(cfg("train.commit_every_min=1.0")) == config_digest(base)  # cadence is not trajectory
    assert config_digest(base, legacy=True) != config_digest(base)
