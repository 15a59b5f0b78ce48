"""T-Maze rules, POPGym adapter, config validation and seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from agent.envs import EnvConfig, EnvConfigError, EnvError, FieldSpec, SnapshotError, episode_seed, make_env
from agent.envs.tmaze import DOWN, LEFT, RIGHT, UP

POPGYM_IDS = ["popgym-RepeatPreviousEasy-v0", "popgym-AutoencodeMedium-v0", "popgym-ConcentrationHard-v0",
              "popgym-BattleshipEasy-v0", "popgym-CountRecallEasy-v0", "popgym-MineSweeperEasy-v0",
              "popgym-HigherLowerEasy-v0", "popgym-MultiarmedBanditEasy-v0",
              "popgym-PositionOnlyCartPoleEasy-v0"]


def tmaze(variant: str = "passive", length: int = 5, **kw):
    return make_env(EnvConfig(kind="tmaze", id=variant, memory_length=length, **kw))


def run(env, actions):
    out = [env.step(a) for a in actions]
    return [o["vector"].tolist() for o, *_ in out], [r for _, r, *_ in out], [(t, tr) for _, _, t, tr in out]


def f32(rows):
    return np.asarray(rows, np.float32).tolist()


def seed_with_goal(env, goal: int) -> int:
    for s in range(100):
        env.reset(s)
        if env._state["goal"] == goal:
            return s
    raise AssertionError("no seed gives that goal")


# --- T-Maze -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("goal", [1, -1])
def test_tmaze_passive_optimal_trajectory_by_hand(goal):
    env = tmaze("passive", 3)
    s = seed_with_goal(env, goal)
    first = env.reset(s)["vector"].tolist()
    assert first == [0.0, 0.0, float(goal), 0.0]  # the cue is in the first observation
    arm = UP if goal == 1 else DOWN
    obs, rew, ends = run(env, [RIGHT, RIGHT, RIGHT, arm])
    assert obs == f32([[1 / 3, 0, 0, 0], [2 / 3, 0, 0, 0], [1, 0, 0, 1], [1, goal, 0, 1]])
    assert rew == [0.0, 0.0, 0.0, 1.0]
    assert ends == [(False, False)] * 3 + [(True, False)]
    assert env.success is True


@pytest.mark.parametrize("goal", [1, -1])
def test_tmaze_wrong_arm_is_penalised_and_not_a_success(goal):
    env = tmaze("passive", 3, wrong_reward=-0.5)
    env.reset(seed_with_goal(env, goal))
    _, rew, ends = run(env, [RIGHT, RIGHT, RIGHT, DOWN if goal == 1 else UP])
    assert rew == [0.0, 0.0, 0.0, -0.5] and ends[-1] == (True, False)
    assert env.success is False
    with pytest.raises(EnvError, match="after the episode ended"):
        env.step(RIGHT)


def test_tmaze_dawdling_costs_the_schedule_penalty_and_times_out():
    env = tmaze("passive", 3, episode_length=6)  # penalty -1/5 per step behind schedule
    env.reset(0)
    obs, rew, ends = run(env, [UP, RIGHT, LEFT, RIGHT, RIGHT, RIGHT])
    # UP in the corridor is blocked; x after each step: 0,1,0,1,2,3 vs schedule t=1..6
    assert [o[0] for o in obs] == f32([0, 1 / 3, 0, 1 / 3, 2 / 3, 1])
    assert rew == pytest.approx([-0.2] * 6)
    assert [e[0] for e in ends] == [False] * 5 + [True] and env.success is False
    assert all(o[2] == 0 for o in obs)  # revisiting the oracle does not show the cue again


def test_tmaze_stall_rule_penalises_each_step_that_does_not_move_right():
    env = tmaze("passive", 3, episode_length=7, penalty_rule="stall")  # penalty -1/6 per stalled step
    env.reset(0)
    _, rew, ends = run(env, [UP, RIGHT, LEFT, RIGHT, RIGHT, RIGHT, RIGHT])
    # x after each step: 0 (blocked), 1, 0, 1, 2, 3, 3 (RIGHT at the junction is blocked)
    assert rew == pytest.approx([-1 / 6, 0, -1 / 6, 0, 0, 0, -1 / 6])
    assert [e[0] for e in ends] == [False] * 6 + [True] and env.success is False
    with pytest.raises(EnvConfigError, match="penalty_rule"):
        EnvConfig(kind="tmaze", penalty_rule="late")


@pytest.mark.parametrize("goal", [1, -1])
def test_tmaze_active_must_step_back_for_the_cue(goal):
    env = tmaze("active", 2)  # oracle at x=0, start x=1, junction x=3, horizon 5
    s = seed_with_goal(env, goal)
    assert env.reset(s)["vector"].tolist() == f32([1 / 3, 0, 0, 0])  # no cue at the start
    obs, rew, ends = run(env, [LEFT, RIGHT, RIGHT, RIGHT, UP if goal == 1 else DOWN])
    assert obs[0] == [0, 0, goal, 0]
    assert obs[3] == [1, 0, 0, 1]
    assert rew == [0.0] * 4 + [1.0] and ends[-1] == (True, False) and env.success
    # Rushing right never sees the cue and runs out of time at the junction.
    env.reset(s)
    obs, rew, ends = run(env, [RIGHT, RIGHT, UP])
    assert all(o[2] == 0 for o in obs) and ends[-1][0] is True


@settings(max_examples=40, deadline=None)
@given(variant=st.sampled_from(["passive", "active"]), length=st.integers(1, 30),
       seed=st.integers(0, 2**31 - 1),
       actions=st.lists(st.integers(0, 3), min_size=1, max_size=40), cut=st.integers(0, 40))
def test_tmaze_snapshot_restore_and_determinism(variant, length, seed, actions, cut):
    a, b = tmaze(variant, length), tmaze(variant, length)
    first = a.reset(seed)
    assert np.array_equal(first["vector"], b.reset(seed)["vector"])
    trace_a, blob = [], None
    for i, act in enumerate(actions):
        if i == cut:
            blob = a.snapshot()
        step = a.step(act)
        trace_a.append((step[0]["vector"].tolist(), *step[1:]))
        if step[2] or step[3]:
            break
    if blob is None:
        return
    b.reset(seed + 1)
    seen = b.restore(blob)["vector"].tolist()
    assert seen == (trace_a[cut - 1][0] if cut else first["vector"].tolist())
    steps = (b.step(x) for x in actions[cut:len(trace_a)])
    trace_b = [(o["vector"].tolist(), r, t, tr) for o, r, t, tr in steps]
    assert trace_b == trace_a[cut:]


def test_tmaze_snapshot_refuses_other_config():
    env = tmaze("passive", 5)
    env.reset(1)
    with pytest.raises(SnapshotError, match="config"):
        tmaze("passive", 6).restore(env.snapshot())
    with pytest.raises(SnapshotError, match="kind"):
        make_env(EnvConfig(kind="popgym", id=POPGYM_IDS[0])).restore(env.snapshot())
    with pytest.raises(SnapshotError):
        env.restore(b"garbage")


# --- POPGym -------------------------------------------------------------------------------------------------


def test_popgym_encodings_are_one_hot_and_actions_flattened():
    env = make_env(EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0"))
    assert env.obs_spec()["vector"] == FieldSpec((4,), "float32") and env.num_actions == 4
    v = env.reset(7)["vector"]
    assert v.dtype == np.float32 and v.sum() == 1 and set(v.tolist()) == {0.0, 1.0}
    bs = make_env(EnvConfig(kind="popgym", id="popgym-BattleshipEasy-v0"))  # MultiDiscrete([8, 8])
    assert bs.num_actions == 64 and bs._decode(8 * 3 + 5).tolist() == [3, 5]
    conc = make_env(EnvConfig(kind="popgym", id="popgym-ConcentrationEasy-v0"))  # MultiDiscrete(52 x 3)
    assert conc.obs_spec()["vector"].shape == (156,) and conc.reset(0)["vector"].sum() == 52


def test_popgym_reward_scale_multiplies_each_reward():
    # RepeatPreviousEasy (4 suits, repeat the card 4 steps back): steps 1-3 pay 0, later ones +-1/(52-4)
    plain, scaled = (make_env(EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0", reward_scale=s))
                     for s in (1.0, 10.0))
    plain.reset(3), scaled.reset(3)
    paid = []
    for action in [0, 1, 2, 3, 0, 1, 2, 3]:
        r1, r10 = plain.step(action)[1], scaled.step(action)[1]
        assert r10 == pytest.approx(10 * r1)
        paid.append(abs(r1))
    assert paid[:3] == [0.0] * 3 and paid[3:] == pytest.approx([1 / 48] * 5)
    with pytest.raises(EnvConfigError, match="reward_scale"):
        EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0", reward_scale=0.0)


@pytest.mark.parametrize("env_id", POPGYM_IDS)
def test_popgym_snapshot_replay_is_exact(env_id):
    cfg = EnvConfig(kind="popgym", id=env_id)
    a, b = make_env(cfg), make_env(cfg)
    rng = np.random.default_rng(0)
    a.reset(123)
    a.step(int(rng.integers(a.num_actions)))
    a.reset(5)  # history of `a` must not matter
    actions = rng.integers(a.num_actions, size=1000).tolist()
    trace = []
    for act in actions:
        o, r, t, tr = a.step(act)
        trace.append((o["vector"].tobytes(), r, t, tr))
        if t or tr:
            break
    assert trace[-1][2] or trace[-1][3], f"{env_id}: episode longer than 1000 steps"
    cut = len(trace) // 2  # mid-episode, also for MineSweeper's short episodes
    a.reset(5)
    for act in actions[:cut]:
        a.step(act)
    b.reset(999)
    b.restore(a.snapshot())
    steps = (b.step(x) for x in actions[cut:len(trace)])
    again = [(o["vector"].tobytes(), r, t, tr) for o, r, t, tr in steps]
    assert again == trace[cut:]
    fresh = make_env(cfg)
    assert np.array_equal(fresh.reset(5)["vector"], b.reset(5)["vector"])


def test_popgym_bad_ids_and_action_spaces():
    with pytest.raises(EnvConfigError, match="not a registered POPGym id"):
        make_env(EnvConfig(kind="popgym", id="popgym-NoSuchThing-v0"))
    with pytest.raises(EnvConfigError, match="only Discrete and MultiDiscrete"):
        make_env(EnvConfig(kind="popgym", id="popgym-PositionOnlyPendulumEasy-v0"))
    env = make_env(EnvConfig(kind="popgym", id=POPGYM_IDS[0]))
    env.reset(0)
    with pytest.raises(ValueError, match=r"not an int in \[0, 4\)"):
        env.step(4)


# --- config and seeding -------------------------------------------------------------------------------------


def test_config_errors_are_clear():
    kinds = r"\['tmaze', 'popgym', 'mmaze'\]"
    with pytest.raises(EnvConfigError, match=r"env.kind='atari' is unknown; expected one of " + kinds):
        EnvConfig(kind="atari")
    with pytest.raises(EnvConfigError, match="T-Maze variant"):
        EnvConfig(kind="tmaze", id="lazy")
    with pytest.raises(EnvConfigError, match="shorter than the 13 steps"):
        EnvConfig(kind="tmaze", id="active", memory_length=10, episode_length=12)
    with pytest.raises(EnvConfigError, match="Memory Maze size"):
        EnvConfig(kind="mmaze", id="7x7")
    with pytest.raises(EnvConfigError, match="popgym-<Name>-v0"):
        EnvConfig(kind="popgym", id="RepeatPreviousEasy")


def test_config_is_omegaconf_structured():
    base = OmegaConf.structured(EnvConfig)
    cfg = OmegaConf.merge(base, {"kind": "popgym", "id": "popgym-AutoencodeEasy-v0"})
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, EnvConfig) and obj.name == "popgym_AutoencodeEasy"
    with pytest.raises(Exception, match="memory_lenght"):
        OmegaConf.merge(base, {"memory_lenght": 3})
    with pytest.raises(EnvConfigError):
        OmegaConf.to_object(OmegaConf.merge(base, {"kind": "nope"}))


def test_episode_seed_is_pure_and_spread():
    assert episode_seed(1, 2, 3) == episode_seed(1, 2, 3)
    seeds = {episode_seed(s, i, e) for s in range(3) for i in range(8) for e in range(50)}
    assert len(seeds) == 3 * 8 * 50 and max(seeds) < 2**31
    with pytest.raises(ValueError):
        episode_seed(0, -1, 0)


def test_every_env_yaml_validates_and_builds():
    root = Path(__file__).resolve().parents[2] / "experiments" / "env"
    files = sorted(root.glob("*.yaml"))
    names = {f.stem for f in files}
    want = {"tmaze_passive", "tmaze_active", "mmaze9x9", "mmaze11x11", "mmaze13x13", "mmaze15x15"} | {
        f"popgym_{t}{d}" for t in ("RepeatPrevious", "Autoencode", "Concentration")
        for d in ("Easy", "Medium", "Hard")}
    assert want <= names, want - names
    for f in files:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvConfig), OmegaConf.load(f)))
        assert isinstance(cfg, EnvConfig), f
        if cfg.kind != "mmaze":  # Memory Maze construction is covered by test_envs_mmaze.py
            env = make_env(cfg)
            obs = env.reset(0)
            assert {k: (v.shape, str(v.dtype)) for k, v in obs.items()} == {
                k: (tuple(s.shape), s.dtype) for k, s in env.obs_spec().items()}, f
