"""Actor-critic in imagination: lambda returns, percentile return normalisation, REINFORCE actor, two-hot critic.

Trajectories are time-major: index 0 is the (posterior) start state, 1..H the imagined states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from agent import nets
from agent.config import AgentConfig
from agent.nets import sg
from agent.world_model import Latent, ac_features


class Actor(nn.Module):
    """Features (..., F) -> action log-probs (..., A) with `unimix` uniform mixing."""

    cfg: AgentConfig
    num_actions: int

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        c = self.cfg
        logits = nets.MLP(c.head_layers, c.head_units, out=self.num_actions, winit=c.winit, eps=c.norm_eps,
                          dtype=c.compute_dtype)(feat)
        return nets.unimix_logits(logits, c.actor_unimix)


class Critic(nn.Module):
    """Features (..., F) -> two-hot symlog value logits (..., bins), zero-initialised output."""

    cfg: AgentConfig

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        c = self.cfg
        return nets.MLP(c.head_layers, c.head_units, out=c.bins, zero_out=True, winit=c.winit, eps=c.norm_eps,
                        dtype=c.compute_dtype)(feat)


class RetNorm(NamedTuple):
    """EMA of the low/high return percentiles."""

    low: jax.Array  # () f32
    high: jax.Array  # () f32

    @staticmethod
    def zeros() -> RetNorm:
        return RetNorm(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def lambda_returns(reward: jax.Array, cont: jax.Array, value: jax.Array, gamma: float, lam: float) -> jax.Array:
    """TD(lambda) returns, bootstrapped from value[-1].

    reward, cont (H, N): reward and continue flag of steps 1..H; value (H+1, N) of steps 0..H -> (H, N) returns
    R_t = r_{t+1} + gamma c_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1}),  R_H = v_H.
    """
    disc = cont * gamma
    interm = reward + disc * value[1:] * (1 - lam)

    def body(nxt, xs):
        inter, d = xs
        ret = inter + d * lam * nxt
        return ret, ret

    _, rets = jax.lax.scan(body, value[-1], (interm, disc), reverse=True)
    return rets


def update_retnorm(norm: RetNorm, ret: jax.Array, cfg: AgentConfig) -> tuple[RetNorm, jax.Array]:
    """EMA-update the percentiles with `ret` (any shape) -> (new norm, scale = max(1, high - low))."""
    low = jnp.percentile(ret, cfg.retnorm_low)
    high = jnp.percentile(ret, cfg.retnorm_high)
    d = cfg.retnorm_decay
    norm = RetNorm(d * norm.low + (1 - d) * low, d * norm.high + (1 - d) * high)
    return norm, jnp.maximum(1.0, norm.high - norm.low)


def imagine(
    img_step: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], Latent],
    policy: Callable[[jax.Array], jax.Array],
    start: Latent,
    num_actions: int,
    horizon: int,
    key: jax.Array,
    with_deter: bool,
) -> tuple[Latent, jax.Array]:
    """Roll `policy` (features -> log-probs) through `img_step` for `horizon` steps from `start` (N, ...).

    Returns (traj Latent (H+1, N, ...), actions (H, N) int32 taken at steps 0..H-1).
    """

    def body(lat: Latent, k: jax.Array):
        k_act, k_img = jax.random.split(k)
        action = jax.random.categorical(k_act, policy(ac_features(lat, with_deter)))
        nxt = img_step(lat.hidden, lat.stoch, jax.nn.one_hot(action, num_actions), k_img)
        return nxt, (lat, action)

    last, (states, actions) = jax.lax.scan(body, start, jax.random.split(key, horizon))
    traj = jax.tree_util.tree_map(lambda s, x: jnp.concatenate([s, x[None]], 0), states, last)
    return traj, actions.astype(jnp.int32)


def trajectory_weight(cont: jax.Array, gamma: float) -> jax.Array:
    """cont (H+1, N) -> weights (H+1, N) = gamma^t * prod_{j<=t} cont_j (reaching step t with discounting)."""
    return jnp.cumprod(gamma * cont, 0) / gamma


def actor_loss(logp: jax.Array, actions: jax.Array, adv: jax.Array, weight: jax.Array, actent: float):
    """REINFORCE with entropy bonus. logp (H, N, A), actions (H, N), adv and weight (H, N) -> (loss, entropy)."""
    logpi = jnp.take_along_axis(logp, actions[..., None], -1)[..., 0]
    ent = nets.categorical_entropy(logp)
    loss = -(logpi * sg(adv) + actent * ent) * sg(weight)
    return loss.mean(), ent


def critic_loss(logits: jax.Array, ret: jax.Array, slow_mean: jax.Array, weight: jax.Array, reg: float):
    """Two-hot NLL of the returns plus the slow-critic regulariser. logits (H, N, K); others (H, N)."""
    dist = nets.TwoHotSymlog(logits)
    nll = -dist.log_prob(sg(ret)) - reg * dist.log_prob(sg(slow_mean))
    return (nll * sg(weight)).mean()
