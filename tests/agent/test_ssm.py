"""SSM: HiPPO init, discretisation, and parallel scan == sequential recurrence across resets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import SSMConfig
from agent.ssm import (
    SSMStack,
    block_hippo,
    discretize_bilinear,
    linear_scan,
    recurrence_elements,
)

CFG = SSMConfig(units=8, hidden=16, layers=2, blocks=8)
B, T = 3, 9


def test_hippo_blocks_init():
    lam, v, vinv = block_hippo(16, 8)
    np.testing.assert_allclose(lam.real, -0.5)
    np.testing.assert_allclose(v @ vinv, np.eye(16), atol=1e-12)
    # 8 identical blocks of size 2, zero outside the blocks
    np.testing.assert_allclose(lam[:2], lam[2:4])
    assert np.all(v[:2, 2:] == 0)


def test_bilinear_discretisation_by_hand():
    lam = jnp.asarray([-0.5 + 1j], jnp.complex64)
    b = jnp.asarray([[2.0 + 0j]], jnp.complex64)
    step = jnp.asarray([0.1])
    a_bar, b_bar = discretize_bilinear(lam, b, step)
    expect_a = (1 + 0.05 * (-0.5 + 1j)) / (1 - 0.05 * (-0.5 + 1j))
    expect_b = 0.1 / (1 - 0.05 * (-0.5 + 1j)) * 2.0
    np.testing.assert_allclose(np.asarray(a_bar)[0], expect_a, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b_bar)[0, 0], expect_b, rtol=1e-6)


def loop_reference(a_bar, bu, reset, x0, x_prev):
    """Plain numpy loop: a reset at t puts x0 in place of x_{t-1} before u_t is applied."""
    x = np.array(x_prev)
    out = np.zeros(bu.shape, np.complex128)
    for t in range(bu.shape[1]):
        x = np.where(reset[:, t, None], x0, x)
        x = a_bar * x + bu[:, t]
        out[:, t] = x
    return out


def reference_flags(reset: np.ndarray) -> np.ndarray:
    """The reference's flag placement: dones of length T are np.insert-ed at -1 (instead of prepended) and the
    T+1 flags are aligned with [initial element, step 0, ..., step T-1]; return the flags seen by steps 0..T-1."""
    flags = np.stack([np.insert(r, -1, 0) for r in reset])
    return flags[:, 1:].astype(bool)


def _elements_case(seed, reset):
    rng = np.random.default_rng(seed)
    p = 4
    a_bar = np.exp(-rng.uniform(0.05, 0.5, p) + 1j * rng.uniform(-1, 1, p))
    bsz, length = reset.shape
    bu = rng.normal(size=(bsz, length, p)) + 1j * rng.normal(size=(bsz, length, p))
    x0 = rng.normal(size=p) + 1j * rng.normal(size=p)
    x_prev = rng.normal(size=(bsz, p)) + 1j * rng.normal(size=(bsz, p))
    return a_bar, bu, x0, x_prev


def _scan(a_bar, bu, reset, x0, x_prev):
    c = jnp.complex64
    a, b = recurrence_elements(jnp.asarray(a_bar, c), jnp.asarray(bu, c), jnp.asarray(reset), jnp.asarray(x0, c),
                               jnp.asarray(x_prev, c))
    return np.asarray(linear_scan(a, b))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=2 * 7, max_size=2 * 7), st.integers(0, 2**16))
def test_elements_scan_matches_loop(flags, seed):
    reset = np.asarray(flags).reshape(2, 7)
    a_bar, bu, x0, x_prev = _elements_case(seed, reset)
    np.testing.assert_allclose(_scan(a_bar, bu, reset, x0, x_prev), loop_reference(a_bar, bu, reset, x0, x_prev),
                               rtol=2e-4, atol=2e-4)


def test_reference_off_by_one_is_detected():
    """The reference's flag placement fires a mid-sequence reset one step early; our elements do not."""
    reset = np.zeros((1, 7), bool)
    reset[0, 4] = True
    a_bar, bu, x0, x_prev = _elements_case(0, reset)
    truth = loop_reference(a_bar, bu, reset, x0, x_prev)
    shifted = reference_flags(reset)
    assert shifted[0, 3] and not shifted[0, 4]
    ref_like = _scan(a_bar, bu, shifted, x0, x_prev)
    assert not np.allclose(ref_like[0, 3], truth[0, 3], atol=1e-3)
    np.testing.assert_allclose(_scan(a_bar, bu, reset, x0, x_prev), truth, rtol=2e-4, atol=2e-4)


@pytest.fixture(scope="module")
def stack():
    model = SSMStack(CFG)
    u = jnp.zeros((B, T, CFG.units))
    reset = jnp.zeros((B, T), bool)
    x = jnp.zeros((B, CFG.layers, CFG.hidden), jnp.complex64)
    params = model.init(jax.random.PRNGKey(0), u, reset, x)
    # make the learned initial state non-trivial so that resets are visible
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jax.random.normal(jax.random.PRNGKey(1), v.shape) if path[-1].key == "initial_hidden" else v,
        params,
    )
    parallel = jax.jit(lambda p, u, r, x: model.apply(p, u, r, x))

    @jax.jit
    def sequential(p, u, r, x):
        def body(x, inp):
            u_t, r_t = inp
            out, hid = model.apply(p, u_t[:, None], r_t[:, None], x)
            return hid[:, 0], (out[:, 0], hid[:, 0])

        _, (out, hid) = jax.lax.scan(body, x, (u.swapaxes(0, 1), r.swapaxes(0, 1)))
        return out.swapaxes(0, 1), hid.swapaxes(0, 1)

    return params, parallel, sequential


@settings(max_examples=20, deadline=None)
@given(st.lists(st.booleans(), min_size=B * T, max_size=B * T), st.integers(0, 2**16))
def test_stack_parallel_equals_sequential(stack, flags, seed):
    params, parallel, sequential = stack
    reset = jnp.asarray(np.asarray(flags).reshape(B, T))
    k_u, k_x = jax.random.split(jax.random.PRNGKey(seed))
    u = jax.random.normal(k_u, (B, T, CFG.units))
    x = jax.random.normal(k_x, (B, CFG.layers, CFG.hidden)) * (1 + 1j)
    out_p, hid_p = parallel(params, u, reset, x)
    out_s, hid_s = sequential(params, u, reset, x)
    np.testing.assert_allclose(np.asarray(hid_p), np.asarray(hid_s), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out_p), np.asarray(out_s), rtol=1e-4, atol=1e-4)


def test_stack_reset_installs_learned_initial_state(stack):
    """After a reset at t, outputs from t on do not depend on anything before t (inputs or incoming state)."""
    params, parallel, _ = stack
    reset = jnp.zeros((B, T), bool).at[:, 0].set(True).at[:, 5].set(True)
    u1 = jax.random.normal(jax.random.PRNGKey(3), (B, T, CFG.units))
    u2 = u1.at[:, :5].set(jax.random.normal(jax.random.PRNGKey(4), (B, 5, CFG.units)))
    x1 = jnp.zeros((B, CFG.layers, CFG.hidden), jnp.complex64)
    x2 = x1 + 3.0
    out1, hid1 = parallel(params, u1, reset, x1)
    out2, hid2 = parallel(params, u2, reset, x2)
    np.testing.assert_allclose(np.asarray(out1[:, 5:]), np.asarray(out2[:, 5:]), atol=1e-5)
    assert not np.allclose(np.asarray(out1[:, 4]), np.asarray(out2[:, 4]), atol=1e-3)
    # incoming state ignored when is_first at t = 0; the state at a reset is A_bar x0 + B_bar u (x0 learned)
    np.testing.assert_allclose(np.asarray(hid1[:, 0]), np.asarray(parallel(params, u1, reset, x2)[1][:, 0]), atol=1e-5)


def test_lambda_re_knob_sets_the_initial_decay():
    u = jnp.zeros((1, 2, CFG.units))
    reset = jnp.ones((1, 2), bool)
    x = jnp.zeros((1, CFG.layers, CFG.hidden), jnp.complex64)
    for lam_re in (-0.5, -0.05):
        cfg = dataclasses.replace(CFG, lambda_re=lam_re)
        params = SSMStack(cfg).init(jax.random.PRNGKey(0), u, reset, x)
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        got = [v for p, v in leaves if getattr(p[-1], "key", None) == "Lambda_re"]
        assert len(got) == 1
        np.testing.assert_array_equal(np.asarray(got[0]), np.float32(lam_re))
