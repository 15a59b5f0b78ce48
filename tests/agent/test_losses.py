"""Loss terms and distributions against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent import actor_critic as ac
from agent import nets
from agent.config import AgentConfig
from agent.world_model import kl_balance


def test_symlog_symexp():
    x = jnp.asarray([-(math.e - 1), 0.0, math.e - 1, 1e6])
    np.testing.assert_allclose(nets.symlog(x)[:3], [-1.0, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(nets.symexp(nets.symlog(x)), x, rtol=1e-5)


def test_two_hot_by_hand():
    bins = jnp.asarray([0.0, 1.0, 2.0])
    np.testing.assert_allclose(nets.two_hot(jnp.asarray(0.25), bins), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(nets.two_hot(jnp.asarray(1.0), bins), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(nets.two_hot(jnp.asarray(-5.0), bins), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(nets.two_hot(jnp.asarray(7.0), bins), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(nets.two_hot(jnp.asarray(1.5), bins), [0.0, 0.5, 0.5])


def test_two_hot_symlog_head():
    logits = jnp.zeros((255,))
    dist = nets.TwoHotSymlog(logits)
    assert float(dist.mean()) == pytest.approx(0.0, abs=1e-5)
    # uniform head: -log p of any target is log(255)
    assert float(dist.log_prob(jnp.asarray(3.0))) == pytest.approx(-math.log(255), rel=1e-5)
    # a head with all mass on the bins around symlog(3) = 1.386 recovers 3
    target = nets.two_hot(nets.symlog(jnp.asarray(3.0)), dist.bins)
    peaked = nets.TwoHotSymlog(jnp.log(target + 1e-12))
    assert float(peaked.mean()) == pytest.approx(3.0, rel=1e-4)
    # bins are 40/254 apart on symlog [-20, 20]
    assert float(dist.bins[1] - dist.bins[0]) == pytest.approx(40 / 254)


def test_unimix_and_straight_through():
    logits = jnp.asarray([10.0, -10.0, -10.0, -10.0])
    logp = nets.unimix_logits(logits, 0.01)
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-6)
    assert float(jnp.exp(logp).min()) >= 0.01 / 4 - 1e-7
    # the one-hot sample's value is hard, its gradient is that of the probabilities
    w = jnp.asarray([1.0, 2.0, 3.0, 4.0])
    grad_st = jax.grad(lambda lg: jnp.sum(nets.sample_onehot(jax.random.PRNGKey(0), jax.nn.log_softmax(lg)) * w))
    grad_p = jax.grad(lambda lg: jnp.sum(jax.nn.softmax(lg) * w))
    np.testing.assert_allclose(grad_st(logits), grad_p(logits), rtol=1e-5)
    sample = nets.sample_onehot(jax.random.PRNGKey(0), logp)
    assert sorted(np.asarray(sample).round(6).tolist()) == [0, 0, 0, 1]


def test_kl_free_bits_by_hand():
    # one latent, two classes: q = (0.5, 0.5), p = (0.9, 0.1)
    q = jnp.log(jnp.asarray([[0.5, 0.5]]))
    p = jnp.log(jnp.asarray([[0.9, 0.1]]))
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    dyn, rep, dyn_loss, rep_loss = kl_balance(q, p, free=1.0, dyn_scale=0.5, rep_scale=0.1)
    assert float(dyn) == pytest.approx(kl, rel=1e-5) and float(rep) == pytest.approx(kl, rel=1e-5)
    assert kl < 1.0  # so the free-bits clip binds
    assert float(dyn_loss) == pytest.approx(0.5) and float(rep_loss) == pytest.approx(0.1)
    _, _, dyn_loss, rep_loss = kl_balance(q, p, free=0.1, dyn_scale=0.5, rep_scale=0.1)
    assert float(dyn_loss) == pytest.approx(0.5 * kl, rel=1e-5)
    # dyn trains only the prior, rep only the posterior
    g_dyn = jax.grad(lambda q, p: kl_balance(q, p, 0.0, 1.0, 0.0)[2].sum(), argnums=(0, 1))(q, p)
    g_rep = jax.grad(lambda q, p: kl_balance(q, p, 0.0, 0.0, 1.0)[3].sum(), argnums=(0, 1))(q, p)
    assert float(jnp.abs(g_dyn[0]).sum()) == 0 and float(jnp.abs(g_dyn[1]).sum()) > 0
    assert float(jnp.abs(g_rep[1]).sum()) == 0 and float(jnp.abs(g_rep[0]).sum()) > 0


def test_lambda_returns_by_hand():
    gamma, lam = 0.9, 0.5
    reward = jnp.asarray([[1.0], [2.0]])  # r_1, r_2
    cont = jnp.asarray([[1.0], [0.0]])  # c_1, c_2
    value = jnp.asarray([[10.0], [20.0], [30.0]])  # v_0, v_1, v_2
    # R_1 = r_2 + g c_2 (...) = 2; R_0 = r_1 + g c_1 ((1 - lam) v_1 + lam R_1) = 1 + 0.9 (10 + 1) = 10.9
    ret = ac.lambda_returns(reward, cont, value, gamma, lam)
    np.testing.assert_allclose(ret[:, 0], [10.9, 2.0], rtol=1e-6)
    # lam = 1 gives discounted Monte-Carlo returns bootstrapped at the end; lam = 0 gives one-step TD
    ret1 = ac.lambda_returns(reward, jnp.ones_like(cont), value, gamma, 1.0)
    np.testing.assert_allclose(ret1[:, 0], [1 + 0.9 * (2 + 0.9 * 30), 2 + 0.9 * 30], rtol=1e-6)
    ret0 = ac.lambda_returns(reward, jnp.ones_like(cont), value, gamma, 0.0)
    np.testing.assert_allclose(ret0[:, 0], [1 + 0.9 * 20, 2 + 0.9 * 30], rtol=1e-6)


def test_trajectory_weight():
    cont = jnp.asarray([[1.0], [1.0], [0.0], [1.0]])
    np.testing.assert_allclose(ac.trajectory_weight(cont, 0.5)[:, 0], [1.0, 0.5, 0.0, 0.0])


def test_percentile_return_normalisation():
    cfg = AgentConfig()
    norm = ac.RetNorm.zeros()
    ret = jnp.arange(101.0)  # 5th percentile 5, 95th 95
    norm, scale = ac.update_retnorm(norm, ret, cfg)
    assert float(norm.low) == pytest.approx(0.05) and float(norm.high) == pytest.approx(0.95)
    assert float(scale) == 1.0  # max(1, 0.9)
    norm, scale = jax.jit(
        lambda n: jax.lax.fori_loop(0, 199, lambda _, c: ac.update_retnorm(c[0], ret, cfg), (n, scale))
    )(norm)
    assert float(scale) == pytest.approx(90.0 * (1 - 0.99**200), rel=1e-4)
    norm2, _ = ac.update_retnorm(ac.RetNorm(jnp.asarray(1.0), jnp.asarray(2.0)), ret * 0 + 7.0, cfg)
    assert float(norm2.low) == pytest.approx(0.99 + 0.07) and float(norm2.high) == pytest.approx(1.98 + 0.07)


def test_reinforce_gradient_by_hand():
    logits = jnp.asarray([[[0.0, math.log(3.0)]]])  # probs (0.25, 0.75)
    actions = jnp.asarray([[1]])
    adv, weight = jnp.asarray([[2.0]]), jnp.asarray([[0.5]])

    def loss(lg):
        return ac.actor_loss(jax.nn.log_softmax(lg), actions, adv, weight, actent=0.0)[0]

    # d(-w A log pi_1)/d logits = -w A (onehot(1) - probs)
    np.testing.assert_allclose(jax.grad(loss)(logits)[0, 0], [0.25, -0.25], rtol=1e-6)
    _, ent = ac.actor_loss(jax.nn.log_softmax(logits), actions, adv, weight, actent=1.0)
    assert float(ent[0, 0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), rel=1e-6)


def test_critic_loss_targets():
    logits = jnp.zeros((1, 1, 255))
    ret, slow, w = jnp.asarray([[1.0]]), jnp.asarray([[1.0]]), jnp.asarray([[1.0]])
    assert float(ac.critic_loss(logits, ret, slow, w, reg=1.0)) == pytest.approx(2 * math.log(255), rel=1e-5)
    assert float(ac.critic_loss(logits, ret, slow, w * 0, reg=1.0)) == 0.0


def test_depth_to_space_layout():
    x = jnp.arange(2 * 2 * 12, dtype=jnp.float32).reshape(1, 2, 2, 12)
    y = nets.depth_to_space(x, 2)
    assert y.shape == (1, 4, 4, 3)
    for i in range(2):
        for j in range(2):
            for di in range(2):
                for dj in range(2):
                    np.testing.assert_array_equal(y[0, 2 * i + di, 2 * j + dj], x[0, i, j, (di * 2 + dj) * 3:][:3])
