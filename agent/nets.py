"""Building blocks: symlog, two-hot and categorical distributions, MLP/CNN encoders, image decoder."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def symlog(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


# ----------------------------------------------------------------------------------------------- distributions


def two_hot(x: jax.Array, bins: jax.Array) -> jax.Array:
    """Two-hot encoding of `x` (...) over sorted `bins` (K,) -> (..., K); values outside are clipped to the ends."""
    k = bins.shape[0]
    below = jnp.clip(jnp.sum(bins <= x[..., None], -1) - 1, 0, k - 1)
    above = jnp.clip(k - jnp.sum(bins > x[..., None], -1), 0, k - 1)
    lo, hi = bins[below], bins[above]
    dist_lo, dist_hi = jnp.abs(lo - x), jnp.abs(hi - x)
    same = below == above
    total = jnp.where(same, 1.0, dist_lo + dist_hi)
    w_lo = jnp.where(same, 1.0, dist_hi / total)
    w_hi = jnp.where(same, 0.0, dist_lo / total)
    return jax.nn.one_hot(below, k) * w_lo[..., None] + jax.nn.one_hot(above, k) * w_hi[..., None]


class TwoHotSymlog:
    """Discrete regression head: softmax over `bins` uniformly spaced in symlog space on [-20, 20]."""

    def __init__(self, logits: jax.Array, low: float = -20.0, high: float = 20.0):
        self.logits = logits  # (..., K)
        self.bins = jnp.linspace(low, high, logits.shape[-1])

    def mean(self) -> jax.Array:
        return symexp(jnp.sum(jax.nn.softmax(self.logits) * self.bins, -1))

    def log_prob(self, x: jax.Array) -> jax.Array:
        target = two_hot(symlog(x), self.bins)
        return jnp.sum(target * jax.nn.log_softmax(self.logits), -1)


def unimix_logits(logits: jax.Array, unimix: float) -> jax.Array:
    """Log-probabilities of (1 - unimix) * softmax(logits) + unimix / K along the last axis."""
    if unimix <= 0:
        return jax.nn.log_softmax(logits)
    probs = jax.nn.softmax(logits)
    probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return jnp.log(probs)


def sample_onehot(key: jax.Array, logp: jax.Array) -> jax.Array:
    """One-hot sample from log-probs (..., K) with straight-through gradients to the probabilities."""
    idx = jax.random.categorical(key, logp)
    hard = jax.nn.one_hot(idx, logp.shape[-1], dtype=logp.dtype)
    probs = jnp.exp(logp)
    return hard + probs - sg(probs)


def mode_onehot(logp: jax.Array) -> jax.Array:
    return jax.nn.one_hot(jnp.argmax(logp, -1), logp.shape[-1], dtype=logp.dtype)


def mode_onehot_st(logp: jax.Array) -> jax.Array:
    """One-hot mode of log-probs (..., K) with straight-through gradients to the probabilities; the forward value
    is exactly 0/1 (p - sg(p) is 0 before it is added)."""
    probs = jnp.exp(logp)
    return mode_onehot(logp) + (probs - sg(probs))


def categorical_kl(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """KL(p || q) for log-probs (..., S, K), summed over the S latents and K classes -> (...)."""
    return jnp.sum(jnp.exp(logp) * (logp - logq), (-2, -1))


def categorical_entropy(logp: jax.Array) -> jax.Array:
    return -jnp.sum(jnp.exp(logp) * logp, -1)


def bernoulli_log_prob(logit: jax.Array, target: jax.Array) -> jax.Array:
    return target * jax.nn.log_sigmoid(logit) + (1 - target) * jax.nn.log_sigmoid(-logit)


# ----------------------------------------------------------------------------------------------------- layers


def kernel_init(winit: str, out: bool = False) -> nn.initializers.Initializer:
    """Kernel initialiser for `agent.winit` (agent/config.py); `out`: a layer producing logits or outputs."""
    if winit == "fan_in":
        return nn.initializers.lecun_normal()  # flax's default for Dense and Conv
    return nn.initializers.variance_scaling(1.0, "fan_avg", "uniform" if out else "truncated_normal")


class DenseNorm(nn.Module):
    """Dense (no bias) -> LayerNorm -> SiLU, computed in `dtype` (params stay float32; flax's LayerNorm takes its
    statistics in float32 whatever the dtype)."""

    units: int
    winit: str = "fan_in"
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.units, use_bias=False, kernel_init=kernel_init(self.winit), dtype=self.dtype)(x)
        return jax.nn.silu(nn.LayerNorm(epsilon=self.eps, dtype=self.dtype)(x))


class MLP(nn.Module):
    """`layers` x DenseNorm, then an optional linear output (zero-initialised if `zero_out`); the output (or the
    last hidden layer) is float32 whatever the compute `dtype`."""

    layers: int
    units: int
    out: int | None = None
    zero_out: bool = False
    winit: str = "fan_in"
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = DenseNorm(self.units, self.winit, self.eps, self.dtype)(x)
        if self.out is not None:
            init = nn.initializers.zeros if self.zero_out else kernel_init(self.winit, out=True)
            x = nn.Dense(self.out, kernel_init=init, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


class ImageEncoder(nn.Module):
    """uint8 (..., 64, 64, 3) -> (..., 16 * 8 * depth): 4 stride-2 4x4 convs with LayerNorm + SiLU."""

    depth: int
    winit: str = "fan_in"
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        lead = image.shape[:-3]
        x = image.reshape((-1, *image.shape[-3:])).astype(jnp.float32) / 255.0 - 0.5
        for mult in (1, 2, 4, 8):
            x = nn.Conv(self.depth * mult, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                        kernel_init=kernel_init(self.winit), dtype=self.dtype)(x)
            x = jax.nn.silu(nn.LayerNorm(epsilon=self.eps, dtype=self.dtype)(x))
        return x.reshape((*lead, -1))


def depth_to_space(x: jax.Array, r: int) -> jax.Array:
    """(N, H, W, C * r * r) -> (N, H * r, W * r, C) (pixel shuffle)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, r, r, c // (r * r))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c // (r * r))


class ImageDecoder(nn.Module):
    """(..., F) -> (..., 64, 64, 3) mean image in [0, 1] units, upsampled 4 -> 64 px in four doublings with
    depth 4d, 2d, d, then 3 channels: by 3x3 conv + depth_to_space (`upsample="pixel_shuffle"`) or by stride-2
    4x4 transposed convs (`"transpose"`, the reference's)."""

    depth: int
    upsample: str = "pixel_shuffle"
    winit: str = "fan_in"
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        lead, dt = feat.shape[:-1], self.dtype
        x = nn.Dense(4 * 4 * 8 * self.depth, kernel_init=kernel_init(self.winit, out=True), dtype=dt)(
            feat.reshape((-1, feat.shape[-1])))
        x = x.reshape((-1, 4, 4, 8 * self.depth))
        for mult in (4, 2, 1):
            if self.upsample == "transpose":
                x = nn.ConvTranspose(self.depth * mult, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                                     kernel_init=kernel_init(self.winit), dtype=dt)(x)
            else:
                x = nn.Conv(4 * self.depth * mult, (3, 3), padding="SAME", use_bias=False,
                            kernel_init=kernel_init(self.winit), dtype=dt)(x)
                x = depth_to_space(x, 2)
            x = jax.nn.silu(nn.LayerNorm(epsilon=self.eps, dtype=dt)(x))
        if self.upsample == "transpose":
            x = nn.ConvTranspose(3, (4, 4), strides=(2, 2), padding="SAME",
                                 kernel_init=kernel_init(self.winit, out=True), dtype=dt)(x)
        else:
            x = depth_to_space(nn.Conv(4 * 3, (3, 3), padding="SAME",
                                       kernel_init=kernel_init(self.winit, out=True), dtype=dt)(x), 2)
        return x.astype(jnp.float32).reshape((*lead, 64, 64, 3)) + 0.5
