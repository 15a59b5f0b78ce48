"""Memory Maze adapter: exact snapshot/restore, per-episode re-seeding, the contact-loop patch.

Each env costs ~2-4 s to build and ~1.3 GB, so the default set has one test; the rest are `slow`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from agent.envs import EnvConfig, FieldSpec, VecEnv, episode_seed, make_env
from agent.envs.mmaze import set_fast_contacts

MMAZE = EnvConfig(kind="mmaze", id="9x9")


def sticky_actions(n: int, seed: int) -> list[int]:
    """Mostly forward with sticky random turns: covers more ground and touches more targets than noise."""
    rng = np.random.default_rng(seed)
    out, a = [], 1
    for _ in range(n):
        if rng.random() < 0.2:
            a = int(rng.choice([1, 1, 2, 3, 4, 5, 0]))
        out.append(a)
    return out


def trace(env, actions):
    return [(o["image"].tobytes(), r, t, tr) for o, r, t, tr in (env.step(a) for a in actions)]


@pytest.fixture(scope="module")
def env():
    e = make_env(MMAZE)
    yield e
    e.close()


def test_mmaze_snapshot_restore_mid_episode_is_bit_identical(env):
    assert env.obs_spec()["image"] == FieldSpec((64, 64, 3), "uint8") and env.num_actions == 6
    first = env.reset(1234)["image"]
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    actions = sticky_actions(40, 0)
    before = trace(env, actions[:20])
    blob = env.snapshot()
    after = trace(env, actions[20:])
    assert len({frame for frame, *_ in after}) > 1, "the agent should see something change"
    restored = env.restore(blob)["image"]
    assert restored.tobytes() == before[-1][0]
    assert trace(env, actions[20:]) == after


@pytest.mark.slow
def test_mmaze_fast_contact_patch_gives_identical_frames(env):
    actions = sticky_actions(600, 1)
    digests = {}
    try:
        for fast in (False, True):
            set_fast_contacts(fast)
            env.reset(77)
            steps = trace(env, actions)
            frames = hashlib.sha256(b"".join(f for f, *_ in steps)).hexdigest()
            digests[fast] = (frames, [s[1:] for s in steps])
    finally:
        set_fast_contacts(MMAZE.fast_contacts)
    assert digests[False] == digests[True]


@pytest.mark.slow
def test_mmaze_resume_in_fresh_worker_process_across_an_episode_boundary():
    # Episodes are 1000 steps: go past the first, then snapshot 30 steps into the second.
    actions = np.array(sticky_actions(1060, 2))[:, None]
    with VecEnv(MMAZE, 1, seed=3, processes=True) as vec:
        vec.reset()
        steps = [vec.step(a)[0] for a in actions[:1030]]
        lasts = [bool(b["is_last"][0]) for b in steps]
        assert lasts.index(True) == 999, "the time limit should end the episode after 1000 steps"
        assert steps[1000]["is_first"][0] and not steps[999]["is_terminal"][0]
        blobs = vec.snapshot()
        ref = [vec.step(a)[0] for a in actions[1030:]]
    with VecEnv(MMAZE, 1, seed=3, processes=True) as vec:
        vec.restore(blobs)
        got = [vec.step(a)[0] for a in actions[1030:]]
    for x, y in zip(ref, got, strict=True):
        assert all(np.array_equal(x[k], y[k]) for k in x)

@pytest.mark.slow
def test_mmaze_episode_depends_on_its_seed_only(env):
    # `env` has lived through other episodes; a fresh env in the same state of mind must agree.
    actions = sticky_actions(15, 3)
    env.reset(5)
    trace(env, actions)
    want = env.reset(episode_seed(3, 0, 1))["image"].tobytes(), trace(env, actions)
    lone = make_env(MMAZE)
    try:
        assert (lone.reset(episode_seed(3, 0, 1))["image"].tobytes(), trace(lone, actions)) == want
    finally:
        lone.close()
