"""bench.popgym_diagnose: right-action labels by hand, then the whole diagnostic on a short real RepeatPreviousEasy
run (no learning is asserted: a few updates)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.train import train, updates_due
from bench.popgym_diagnose import DiagnoseError, Diagnosis, _rank, diagnose, right_actions, verdict
from tests.agent.test_train import make_cfg, make_ctx


def test_right_actions_of_a_hand_written_sequence():
    # a row before the first episode start, episode A (rows 1-7, ends at 7), episode B (rows 8-12, still running)
    suit = np.array([1, 2, 0, 3, 1, 1, 0, 2, 3, 1, 0, 2, 2])
    is_first = np.zeros(13, bool)
    is_first[[1, 8]] = True
    is_last = np.zeros(13, bool)
    is_last[7] = True
    # k = 4: the action at an episode's row j >= 3 pays the suit of row j - 3; none at A's last row
    expected = [-1, -1, -1, -1, 2, 0, 3, -1, -1, -1, -1, 3, 1]
    np.testing.assert_array_equal(right_actions(suit, is_first, is_last, 4), expected)
    # k = 1: the current suit from the episode's first row on
    np.testing.assert_array_equal(right_actions(suit, is_first, is_last, 1),
                                  [-1, 2, 0, 3, 1, 1, 0, -1, 3, 1, 0, 2, 2])


def test_rank_counts_ties_against_the_right_action():
    scores = np.array([[0.0, 0.0, 0.0, 0.0], [0.1, 0.5, 0.2, 0.0], [0.1, 0.5, 0.2, 0.0]])
    np.testing.assert_array_equal(_rank(scores, np.array([2, 1, 0])), [4, 1, 3])


def test_diagnose_a_short_real_run(tmp_path: Path):
    cfg = make_cfg("popgym")  # 96 env steps on 2 streams: 48 rows each, inside one 52-row episode
    assert train(cfg, make_ctx(tmp_path)) == "done"
    d = diagnose(cfg, str(tmp_path / "durable"), sequences=4, length=32)
    assert (d.k, d.num_actions, d.env_steps, d.updates, d.sequences) == (4, 4, 96, updates_due(96, cfg), 2)
    assert d.scored == 2 * 28  # rows 3..30 of each window: row 31's reward is outside it
    # the env's own rewards agree with the labels: +reward exactly when the taken action is the label
    assert d.labels_match_rewards == 1.0
    fractions = ("wm_right_first", "actor_p_right", "actor_right_first", "actor_agrees_wm", "taken_right")
    assert all(0.0 <= getattr(d, n) <= 1.0 for n in fractions)
    assert 0.25 <= d.actor_one_action <= 1.0 and d.wm_action_spread >= 0.0
    assert 0.0 <= d.actor_entropy <= math.log(4) + 1e-6
    assert 1.0 <= d.wm_mean_rank <= 4.0 and 1.0 <= d.actor_mean_rank <= 4.0
    floats = [getattr(d, f.name) for f in dataclasses.fields(d) if isinstance(getattr(d, f.name), float)]
    assert all(math.isfinite(x) for x in floats)
    # +-1/48 a scored row: the mean received reward follows from the fraction taken right
    assert d.received_reward == pytest.approx((2 * d.taken_right - 1) / 48, abs=1e-6)
    assert d.wm_separates == (d.wm_right_first >= d.threshold) and d.threshold == 0.625
    assert d.verdict == verdict(d.wm_separates, d.actor_follows)
    assert Diagnosis.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert (tmp_path / "durable").is_dir()  # read from a copy, the store stays

    with pytest.raises(DiagnoseError, match="another config"):
        diagnose(dataclasses.replace(cfg, seed=4), str(tmp_path / "durable"), sequences=4, length=32)
    with pytest.raises(DiagnoseError, match="episode start with 64 rows"):
        diagnose(cfg, str(tmp_path / "durable"), sequences=4, length=64)
    with pytest.raises(DiagnoseError, match="is not POPGym RepeatPrevious"):
        diagnose(make_cfg("tmaze"), str(tmp_path / "durable"))
