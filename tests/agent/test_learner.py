"""Learner on the tiny preset: determinism, save/restore continuation, optimiser groups, acting, learning signal."""

import dataclasses
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from omegaconf import OmegaConf

from agent.config import ConfigError, agent_config_from
from agent.learner import SSM_LEAVES, make_learner, make_optimizer

PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "agent"
OBS = {"vector": (3,)}
NUM_ACTIONS = 3
B, T = 2, 8


def tiny_cfg():
    return agent_config_from(OmegaConf.load(PRESETS / "tiny.yaml"))


def make_batch(seed: int, bsz: int = B, length: int = T) -> dict:
    rng = np.random.default_rng(seed)
    is_first = rng.random((bsz, length)) < 0.2
    return {
        "vector": rng.normal(size=(bsz, length, 3)).astype(np.float32),
        "reward": rng.normal(size=(bsz, length)).astype(np.float32),
        "action": rng.integers(0, NUM_ACTIONS, (bsz, length)).astype(np.int32),
        "is_first": is_first,
        "is_last": np.roll(is_first, -1, 1),
        "is_terminal": np.roll(is_first, -1, 1) & (rng.random((bsz, length)) < 0.5),
    }


@pytest.fixture(scope="module")
def tiny():
    learner = make_learner(tiny_cfg(), OBS, NUM_ACTIONS)
    return learner, jax.jit(learner.init), jax.jit(learner.train_step)


def run(init, step, seed: int, n: int, state=None, start: int = 0):
    state = init(jax.random.PRNGKey(seed)) if state is None else state
    metrics = None
    for i in range(start, start + n):
        state, metrics = step(state, make_batch(i), jax.random.PRNGKey(1000 + i))
    return state, metrics


def test_same_seed_identical_bytes(tiny):
    learner, init, step = tiny
    a, metrics = run(init, step, 0, 3)
    b, _ = run(init, step, 0, 3)
    assert learner.state_to_bytes(a) == learner.state_to_bytes(b)
    c, _ = run(init, step, 1, 3)
    assert learner.state_to_bytes(a) != learner.state_to_bytes(c)
    assert int(a.step) == 3
    for k, v in metrics.items():
        assert v.shape == () and np.isfinite(float(v)), k


def test_save_restore_continues_identically(tiny):
    learner, init, step = tiny
    full, _ = run(init, step, 0, 4)
    half, _ = run(init, step, 0, 2)
    blob = learner.state_to_bytes(half)
    template = init(jax.random.PRNGKey(99))  # different values, same structure
    restored = learner.state_from_bytes(template, blob)
    assert learner.state_to_bytes(restored) == blob
    abstract = jax.eval_shape(learner.init, jax.random.PRNGKey(0))  # a template without computing anything
    assert learner.state_to_bytes(learner.state_from_bytes(abstract, blob)) == blob
    resumed, _ = run(init, step, 0, 2, state=restored, start=2)
    assert learner.state_to_bytes(resumed) == learner.state_to_bytes(full)
    # the blob is msgpack (no pickle) and carries every part of the state
    restored_dict = flax.serialization.msgpack_restore(blob)
    assert set(restored_dict) == {"params", "slow_critic", "opt_state", "retnorm", "step"}


def test_world_model_fits_a_fixed_batch(tiny):
    _, init, step = tiny
    state = init(jax.random.PRNGKey(0))
    batch = make_batch(0)
    losses = []
    for i in range(60):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append([float(m["wm/vector_loss"]), float(m["wm/reward_loss"])])
    first, last = np.mean(losses[:5], 0), np.mean(losses[-5:], 0)
    assert last[0] < 0.7 * first[0] and last[1] < 0.9 * first[1], (first, last)


def test_policy_step_and_reset(tiny):
    learner, init, _ = tiny
    params = init(jax.random.PRNGKey(0)).params
    policy = jax.jit(learner.policy_step)
    w = 4
    carry = learner.init_policy_carry(w)
    obs = {"vector": np.ones((w, 3), np.float32)}
    first = np.ones(w, bool)
    carry1, action = policy(params, carry, obs, first, jax.random.PRNGKey(0))
    assert action.shape == (w,) and action.dtype == jnp.int32
    assert int(action.min()) >= 0 and int(action.max()) < NUM_ACTIONS
    assert carry1.hidden_re.shape == (w, 2, 16) and carry1.stoch.shape == (w, 16)
    carry2, _ = policy(params, carry1, obs, np.zeros(w, bool), jax.random.PRNGKey(1))
    # is_first discards whatever the carry held: same result from a used carry and from a fresh one
    again, action_again = policy(params, carry2, obs, first, jax.random.PRNGKey(0))
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(carry1), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    np.testing.assert_array_equal(action_again, action)
    assert not np.allclose(np.asarray(carry2.hidden_re), np.asarray(carry1.hidden_re))
    # the carry serialises without pickle
    blob = flax.serialization.to_bytes(carry2)
    back = flax.serialization.from_bytes(learner.init_policy_carry(w), blob)
    np.testing.assert_array_equal(np.asarray(back.stoch), np.asarray(carry2.stoch))


def test_act_explore_mixes_uniform_actions_into_acting_only(tiny):
    """act_explore=e acts from (1 - e) * pi + e / A: e=0 is the actor's own sample (same key, same action),
    e=1 is uniform whatever the actor says; training is untouched (the loss never sees the knob)."""
    learner, init, _ = tiny
    params = init(jax.random.PRNGKey(0)).params
    head = params["actor"]["params"]["MLP_0"]["Dense_0"]
    head["bias"] = head["bias"].at[0].add(5.0)  # an actor that nearly always picks action 0
    w = 4096
    carry = learner.init_policy_carry(w)
    obs = {"vector": np.ones((w, 3), np.float32)}
    first, key = np.ones(w, bool), jax.random.PRNGKey(3)
    _, a0 = jax.jit(learner.policy_step)(params, carry, obs, first, key)

    def acting(explore: float) -> np.ndarray:
        cfg = dataclasses.replace(tiny_cfg(), act_explore=explore)
        other = make_learner(cfg, OBS, NUM_ACTIONS)
        return np.asarray(jax.jit(other.policy_step)(params, carry, obs, first, key)[1])

    np.testing.assert_array_equal(acting(0.0), a0)
    pi = np.bincount(np.asarray(a0), minlength=NUM_ACTIONS) / w
    assert pi[0] > 0.9, pi
    for e in (0.5, 1.0):
        freq = np.bincount(acting(e), minlength=NUM_ACTIONS) / w
        np.testing.assert_allclose(freq, (1 - e) * pi + e / NUM_ACTIONS, atol=0.03)
    with pytest.raises(ConfigError, match="act_explore"):
        dataclasses.replace(tiny_cfg(), act_explore=1.5)


def test_optimizer_groups_and_weight_decay(tiny):
    learner, init, _ = tiny
    cfg = tiny_cfg()
    assert cfg.model_opt.wd > 0
    params = init(jax.random.PRNGKey(0)).params
    opt = make_optimizer(cfg)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    seen_ssm = set()
    for (path, u), p in zip(flat, jax.tree.leaves(params), strict=True):
        name, group = path[-1].key, path[0].key
        decays = bool(jnp.any(u != 0))
        if group == "wm" and name in SSM_LEAVES:
            seen_ssm.add(name)
            assert not decays, path  # SSM group: no weight decay
        elif group == "wm" and name == "kernel":
            assert decays or not bool(jnp.any(p != 0)), path  # model kernels decay (zero-init ones stay put)
        else:
            assert not decays, path  # biases, norms, actor/critic (wd 0)
    assert seen_ssm == SSM_LEAVES


def test_clipping_is_per_group(tiny):
    learner, init, _ = tiny
    cfg = tiny_cfg()
    params = init(jax.random.PRNGKey(0)).params
    opt = make_optimizer(cfg)
    state = opt.init(params)
    # a huge actor gradient must not shrink the (small) model-group step: clipping is computed per group
    small = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
    huge = {**small, "actor": jax.tree.map(lambda x: jnp.full_like(x, 1e6), params["actor"])}
    update = jax.jit(opt.update)
    u_small, _ = update(small, state, params)
    u_huge, _ = update(huge, state, params)
    for a, b in zip(jax.tree.leaves(u_small["wm"]), jax.tree.leaves(u_huge["wm"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert optax.tree.norm(u_huge["actor"]) < 1.0  # one Adam step of lr 1e-3 per element


def test_bad_obs_spec_is_rejected():
    cfg = tiny_cfg()
    with pytest.raises(ConfigError, match="image"):
        make_learner(cfg, {"image": (32, 32, 3)}, 2)
    with pytest.raises(ConfigError, match="depth"):
        make_learner(cfg, {"depth": (3,)}, 2)
    with pytest.raises(ConfigError, match="num_actions"):
        make_learner(cfg, OBS, 0)


def test_actor_learns_to_prefer_the_rewarded_action(tiny):
    """End-to-end sign check: reward 1 on arriving after action 0 (else 0); imagination must teach the actor."""
    learner, init, step = tiny
    state = init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)

    def batch():
        b = make_batch(int(rng.integers(1 << 30)))
        prev = np.concatenate([np.zeros((B, 1), np.int32), b["action"][:, :-1]], 1)
        b["reward"] = ((prev == 0) & ~b["is_first"]).astype(np.float32)
        b["is_terminal"][:] = False
        return b

    # measured on this preset: the world model separates the rewards after ~900 updates, P(action 0) = 0.95 at
    # 1000 and 0.99 (the unimix ceiling) at 1500
    for i in range(1500):
        state, metrics = step(state, batch(), jax.random.PRNGKey(i))
    policy = jax.jit(learner.policy_step)
    w = 64
    carry = learner.init_policy_carry(w)
    first = np.ones(w, bool)
    actions = []
    for t in range(5):
        obs = {"vector": rng.normal(size=(w, 3)).astype(np.float32)}
        carry, action = policy(state.params, carry, obs, first, jax.random.PRNGKey(t))
        first = np.zeros(w, bool)
        actions.append(np.asarray(action))
    frac = float(np.mean(np.concatenate(actions) == 0))
    assert frac > 0.9, (frac, {k: float(v) for k, v in metrics.items()})
