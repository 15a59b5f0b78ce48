"""bench.diagnose: right-action labels by hand, then the whole diagnostic on short real RepeatPreviousEasy and
T-Maze runs (no learning is asserted: a few updates)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agent.envs.config import EnvConfig
from agent.envs.tmaze import DOWN, UP
from agent.train import train, updates_due
from bench.diagnose import DiagnoseError, Diagnosis, LabelRow, _rank, diagnose, right_actions, right_arms, verdict
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
    assert d.verdict == verdict(d.wm_separates, d.actor_follows, "suit", d.wm_label_spread > 2 * d.wm_action_spread)
    assert Diagnosis.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert (tmp_path / "durable").is_dir()  # read from a copy, the store stays

    with pytest.raises(DiagnoseError, match="another config"):
        diagnose(dataclasses.replace(cfg, seed=4), str(tmp_path / "durable"), sequences=4, length=32)
    with pytest.raises(DiagnoseError, match="episode start with 64 rows"):
        diagnose(cfg, str(tmp_path / "durable"), sequences=4, length=64)
    with pytest.raises(DiagnoseError, match="neither POPGym RepeatPrevious nor T-Maze"):
        diagnose(dataclasses.replace(cfg, env=EnvConfig(kind="popgym", id="popgym-CountRecallEasy-v0")),
                 str(tmp_path / "durable"))


def test_right_arms_of_a_hand_written_sequence():
    # passive T-Maze, L = 2: rows [x, y, cue, at junction]; a row before the first episode start (at the junction,
    # cue unknown), episode A (cue +1: right, stall at the junction, enter up), episode B (cue -1, still running)
    rows = [[1.0, 0, 0, 1],
            [0.0, 0, 1, 0], [0.5, 0, 0, 0], [1.0, 0, 0, 1], [1.0, 0, 0, 1], [1.0, 1, 0, 1],
            [0.0, 0, -1, 0], [0.5, 0, 0, 0], [1.0, 0, 0, 1]]
    is_first = np.zeros(9, bool)
    is_first[[1, 6]] = True
    is_last = np.zeros(9, bool)
    is_last[5] = True
    expected = [-1, -1, -1, UP, UP, -1, -1, -1, DOWN]
    np.testing.assert_array_equal(right_arms(np.array(rows, np.float32), is_first, is_last), expected)
    # active: the cue shows on the oracle visit, after the first row; the junction before it is unscored
    active = np.array([[0.5, 0, 0, 0], [1.0, 0, 0, 1], [0.0, 0, -1, 0], [1.0, 0, 0, 1]], np.float32)
    np.testing.assert_array_equal(right_arms(active, np.array([1, 0, 0, 0], bool), np.zeros(4, bool)),
                                  [-1, -1, -1, DOWN])


def test_diagnose_a_short_real_tmaze_run(tmp_path: Path):
    # L = 1 and 8-step episodes: a random policy reaches the junction often, so prefill alone has scored rows
    cfg = make_cfg("tmaze", steps=128)
    cfg = dataclasses.replace(cfg, env=EnvConfig(kind="tmaze", id="passive", memory_length=1, episode_length=8,
                                                 goal_reward=10.0, penalty_rule="stall", step_penalty=-2.0))
    assert train(cfg, make_ctx(tmp_path)) == "done"
    d = diagnose(cfg, str(tmp_path / "durable"), sequences=4, length=32)
    assert (d.task, d.candidates, d.k, d.num_actions, d.threshold) == ("tmaze", (UP, DOWN), 0, 4, 0.75)
    assert d.scored > 0 and d.labels_match_rewards == 1.0
    assert sum(r.rows for r in d.by_label) == d.scored and {r.label for r in d.by_label} <= {UP, DOWN}
    for r in d.by_label:
        assert len(r.wm_reward) == len(r.actor_p) == 2 and all(0.0 <= p <= 1.0 for p in r.actor_p)
    # the arm rows are weighted means of the per-label rows
    right = np.array([r.wm_reward[d.candidates.index(r.label)] for r in d.by_label])
    assert d.wm_right_reward == pytest.approx(np.average(right, weights=[r.rows for r in d.by_label]), abs=1e-5)
    assert d.wm_label_spread >= 0.0
    assert d.verdict == verdict(d.wm_separates, d.actor_follows, "arm", d.wm_label_spread > 2 * d.wm_action_spread)
    assert Diagnosis.from_json(json.loads(json.dumps(d.to_json()))) == d


def test_a_diagnosis_recorded_before_the_task_fields_still_reads():
    old = json.loads((Path(__file__).parents[2] / "bench" / "results" /
                      "popgym_diagnose_repeat_previous_easy_300k.json").read_text())
    assert "by_label" not in old and "task" not in old
    d = Diagnosis.from_json(old)
    assert (d.task, d.candidates, d.by_label) == ("repeat_previous", (0, 1, 2, 3), ())
    with pytest.raises(DiagnoseError, match="lacks verdict"):
        Diagnosis.from_json({k: v for k, v in old.items() if k != "verdict"})
    row = LabelRow(1, 3, (0.5, -0.25), (0.75, 0.25))
    assert LabelRow.from_json(json.loads(json.dumps(row.to_json()))) == row


def test_verdict_names_a_world_model_that_follows_the_label_only():
    assert "follows the right arm but is the same for every action" in verdict(False, False, "arm", True)
    assert verdict(False, False, "arm", False).startswith("the world model fails: its reward head does not tell")
    assert verdict(True, False, "arm").startswith("the actor fails")
