"""bench.tmaze_arms counts arm entries by cue from rows laid out as the training loop stores them."""

from __future__ import annotations

import numpy as np

from agent.envs import EnvConfig, make_env
from agent.envs.tmaze import DOWN, LEFT, RIGHT, UP
from bench.tmaze_arms import arm_counts


def test_arm_counts_of_real_episodes_by_cue_and_window():
    env = make_env(EnvConfig(kind="tmaze", id="passive", memory_length=5, episode_length=8))
    rows, first, last, expected = [], [], [], {}
    plans = [[RIGHT] * 5 + [UP], [RIGHT] * 5 + [DOWN], [LEFT] * 8, [RIGHT] * 5 + [UP], [RIGHT] * 5 + [DOWN],
             [RIGHT] * 5 + [UP], [RIGHT, RIGHT]]  # the 3rd times out in the corridor, the last is unfinished
    for seed, plan in enumerate(plans):
        obs = env.reset(seed)
        cue = obs["vector"][2]
        rows.append(obs["vector"])
        first.append(True)
        last.append(False)
        done = False
        for a in plan:
            obs, _, term, trunc = env.step(a)
            done = term or trunc
            rows.append(obs["vector"])
            first.append(False)
            last.append(done)
        if done and plan[-1] in (UP, DOWN):
            c = expected.setdefault((len(rows) - 1) * 3 // 40, np.zeros((2, 2), int))
            c[int(cue > 0), int(plan[-1] == UP)] += 1
    got = arm_counts(np.array(rows), np.array(first), np.array(last), 0, 3, 40)  # 3 streams: 3 env steps a row
    assert sorted(got) == sorted(expected) == [0, 2, 3] and sum(c.sum() for c in got.values()) == 5
    for k in got:
        np.testing.assert_array_equal(got[k], expected[k])
