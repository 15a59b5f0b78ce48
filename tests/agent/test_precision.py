"""agent.precision=bfloat16: compute in bf16, params / optimiser state / losses in f32, close to f32 early on."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent.config import ConfigError
from agent.learner import make_learner
from tests.agent.test_learner import NUM_ACTIONS, OBS, make_batch, tiny_cfg


def _run(precision: str, updates: int, fixed_batch: bool = False):
    cfg = dataclasses.replace(tiny_cfg(), precision=precision)
    learner = make_learner(cfg, OBS, NUM_ACTIONS)
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    step = jax.jit(learner.train_step)
    history = []
    for i in range(updates):
        state, m = step(state, make_batch(0 if fixed_batch else i), jax.random.PRNGKey(100 + i))
        history.append({k: float(v) for k, v in jax.device_get(m).items()})
    return learner, state, history


def test_bf16_keeps_params_and_optimiser_state_in_f32_and_is_close_to_f32():
    _, s32, h32 = _run("float32", 3)
    _, s16, h16 = _run("bfloat16", 3)
    for leaf in jax.tree.leaves((s16.params, s16.opt_state, s16.slow_critic)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype
    for a, b in zip(h32, h16, strict=True):
        for k in a:
            assert np.isfinite(b[k]), k
        # bf16 keeps 8 bits of mantissa: a few per mille per op, compounded through ~10 layers
        for k in ("wm/vector_loss", "wm/reward_loss", "wm/cont_loss", "wm/dyn_loss"):
            assert b[k] == pytest.approx(a[k], rel=5e-2, abs=2e-2), (k, a[k], b[k])
    diff = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), s32.params, s16.params)
    assert max(jax.tree.leaves(diff)) < 1e-2  # three Adam steps of lr 1e-3 moved every param the same way


def test_bf16_compute_actually_runs_in_bf16():
    cfg = dataclasses.replace(tiny_cfg(), precision="bfloat16")
    learner = make_learner(cfg, OBS, NUM_ACTIONS)
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    text = jax.jit(learner.train_step).lower(state, make_batch(0), jax.random.PRNGKey(1)).as_text()
    assert "bf16" in text
    f32 = make_learner(tiny_cfg(), OBS, NUM_ACTIONS)
    assert "bf16" not in jax.jit(f32.train_step).lower(state, make_batch(0), jax.random.PRNGKey(1)).as_text()


def test_bf16_learns_a_fixed_batch():
    _, _, h = _run("bfloat16", 40, fixed_batch=True)
    first, last = h[0]["wm/vector_loss"], h[-1]["wm/vector_loss"]
    assert np.isfinite(last) and last < 0.7 * first, (first, last)


def test_unknown_precision_names_the_key():
    with pytest.raises(ConfigError, match="agent.precision"):
        dataclasses.replace(tiny_cfg(), precision="float16")
