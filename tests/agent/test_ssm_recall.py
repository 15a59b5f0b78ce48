"""Supervised recall through the SSM stack alone: a +-1 cue at step 0, 23 steps of random one-hot distractors,
predict the cue at the last step. The stack learns this in 150 Adam steps with either B/C init (ours and the
reference's: `SSMConfig.bc_init`); the same training with the reset one step after the cue (which wipes it)
stays at chance, so the check can fail on a stack that loses its input at a reset, forgets within the window,
or passes no gradient back through time."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agent import nets
from agent.config import SSMConfig
from agent.ssm import SSMStack

CFG = SSMConfig(units=16, hidden=16, layers=2, blocks=2)
B, T, STEPS = 32, 24, 150


class Recall(nn.Module):
    cfg: SSMConfig = CFG

    @nn.compact
    def __call__(self, x: jax.Array, reset: jax.Array) -> jax.Array:
        u = nets.DenseNorm(self.cfg.units)(x)
        x_prev = jnp.zeros((x.shape[0], self.cfg.layers, self.cfg.hidden), jnp.complex64)
        out, _ = SSMStack(self.cfg)(u, reset, x_prev)
        return nn.Dense(1)(out[:, -1])[..., 0]


def batches(rng: np.random.Generator, n: int, reset_at: int):
    cue = rng.choice([-1.0, 1.0], (n, B))
    x = np.zeros((n, B, T, 5), np.float32)
    x[:, :, 0, 0] = cue
    distract = 1 + rng.integers(0, 4, (n, B, T))
    np.put_along_axis(x, distract[..., None], 1.0, -1)
    reset = np.zeros((n, B, T), bool)
    reset[:, :, reset_at] = True
    return jnp.asarray(x), jnp.asarray(reset), jnp.asarray(cue, jnp.float32)


OPT = optax.adam(3e-3)


def recall_accuracy(reset_at: int, bc_init: str = "fan_in") -> float:
    net = Recall(dataclasses.replace(CFG, bc_init=bc_init))

    def loss(params, x, reset, cue):
        return jnp.mean(jax.nn.softplus(-cue * net.apply(params, x, reset)))

    @jax.jit
    def train(params, xs, resets, cues):
        def body(carry, batch):
            params, state = carry
            grads = jax.grad(loss)(params, *batch)
            updates, state = OPT.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(body, (params, OPT.init(params)), (xs, resets, cues))
        return params

    rng = np.random.default_rng(0)
    xs, resets, cues = batches(rng, STEPS + 1, reset_at)
    params = net.init(jax.random.PRNGKey(0), xs[0], resets[0])
    params = train(params, xs[:-1], resets[:-1], cues[:-1])
    pred = net.apply(params, xs[-1], resets[-1])
    return float(jnp.mean(jnp.sign(pred) == cues[-1]))


@pytest.mark.parametrize("bc_init", ["fan_in", "reference"])
def test_ssm_stack_learns_to_recall_a_cue_across_23_steps(bc_init):
    assert recall_accuracy(reset_at=0, bc_init=bc_init) >= 0.95


def test_recall_fails_when_a_reset_after_the_cue_wipes_it():
    assert recall_accuracy(reset_at=1) <= 0.8
