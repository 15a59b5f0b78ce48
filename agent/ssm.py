"""S5-style SSM stack with a reset-aware parallel scan (training) and a one-step recurrence (acting, imagining).

Per layer, with complex diagonal state x (P,) and input u (H,):
    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = Re(C x_t) + D * u_t
A reset at step t replaces x_{t-1} by the learned initial state x0 *before* u_t is applied. The reference inserts
its reset flags one index early (`np.insert(dones, -1, 0)`), which fires each reset one step early in training only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agent.config import SSMConfig


def hippo_legs_normal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the normal part of HiPPO-LegS (size n): (Lambda (n,) c128, V (n, n) c128)."""
    p = np.sqrt(1 + 2 * np.arange(n))
    a = p[:, None] * p[None, :]
    a = np.tril(a) - np.diag(np.arange(n))
    hippo = -a
    p_low = np.sqrt(np.arange(n) + 0.5)
    s = hippo + p_low[:, None] * p_low[None, :]
    lam_re = np.mean(np.diagonal(s)) * np.ones(n)  # = -0.5
    lam_im, v = np.linalg.eigh(s * -1j)
    return lam_re + 1j * lam_im, v


def block_hippo(p: int, blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blockwise init: (Lambda (P,), V (P, P), V^-1 (P, P)), complex128."""
    lam, v = hippo_legs_normal(p // blocks)
    lam = np.tile(lam, blocks)
    v_full = np.kron(np.eye(blocks), v)
    vinv_full = np.kron(np.eye(blocks), v.conj().T)
    return lam, v_full, vinv_full


def discretize_bilinear(lam: jax.Array, b: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """lam (P,) c64, b (P, H) c64, step (P,) f32 -> (A_bar (P,), B_bar (P, H))."""
    half = step * lam / 2
    inv = 1.0 / (1.0 - half)
    return (1.0 + half) * inv, (inv * step)[:, None] * b


def recurrence_elements(a_bar: jax.Array, bu: jax.Array, reset: jax.Array, x0: jax.Array, x_prev: jax.Array):
    """Fold resets and the incoming state into the elements of a plain linear recurrence.

    a_bar (P,), bu (B, T, P), reset (B, T) bool, x0 (P,) learned initial state, x_prev (B, P) state before t=0.
    Returns (a (B, T, P), b (B, T, P)) with x_t = a_t x_{t-1} + b_t and x_{-1} = 0: at a reset, a_t = 0 and
    b_t = A_bar x0 + Bu_t, which cuts the history exactly at t.
    """
    r = reset[..., None]
    a = jnp.where(r, 0.0, jnp.broadcast_to(a_bar, bu.shape))
    b = bu + jnp.where(r, a_bar * x0, 0.0)
    b = b.at[:, 0].add(a[:, 0] * x_prev)
    return a, b


def linear_scan(a: jax.Array, b: jax.Array) -> jax.Array:
    """x_t = a_t x_{t-1} + b_t with x_{-1} = 0, by associative scan over axis 1 of (B, T, P) arrays."""

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_r * a_l, a_r * b_l + b_r

    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


class S5Cell(nn.Module):
    """Complex diagonal SSM (MIMO/S5) with HiPPO-LegS block init and bilinear discretisation."""

    cfg: SSMConfig

    def setup(self) -> None:
        p, h = self.cfg.hidden, self.cfg.units
        lam, v, vinv = block_hippo(p, self.cfg.blocks)
        v_c, vinv_c = jnp.asarray(v, jnp.complex64), jnp.asarray(vinv, jnp.complex64)

        # before the rotation into the HiPPO eigenbasis: see SSMConfig.bc_init
        reference = self.cfg.bc_init == "reference"

        def b_init(key, shape):
            if reference:  # lecun_normal on a real (P, H): its fan-in axis is P
                bx = nn.initializers.lecun_normal()(key, (p, h)).astype(jnp.complex64)
            else:
                bx = jax.random.normal(key, (p, h, 2)) / np.sqrt(h)
                bx = bx[..., 0] + 1j * bx[..., 1]
            b = vinv_c @ bx
            return jnp.stack([b.real, b.imag], -1).astype(jnp.float32)

        def c_init(key, shape):
            if reference:  # lecun_normal on (H, P, 2): fan-in P, with H as the receptive field -> P * H
                cx = nn.initializers.lecun_normal()(key, (h, p, 2))
            else:
                cx = jax.random.normal(key, (h, p, 2)) / np.sqrt(p)
            c = (cx[..., 0] + 1j * cx[..., 1]) @ v_c
            return jnp.stack([c.real, c.imag], -1).astype(jnp.float32)

        def log_step_init(key, shape):
            lo, hi = np.log(self.cfg.dt_min), np.log(self.cfg.dt_max)
            return jax.random.uniform(key, shape, minval=lo, maxval=hi)

        self.Lambda_re = self.param("Lambda_re", lambda k, s: jnp.full(s, self.cfg.lambda_re, jnp.float32), (p,))
        self.Lambda_im = self.param("Lambda_im", lambda k, s: jnp.asarray(lam.imag, jnp.float32), (p,))
        self.B = self.param("B", b_init, (p, h, 2))
        self.C = self.param("C", c_init, (h, p, 2))
        self.D = self.param("D", nn.initializers.normal(1.0), (h,))
        self.log_step = self.param("log_step", log_step_init, (p, 1))

    def discrete(self) -> tuple[jax.Array, jax.Array]:
        lam = self.Lambda_re + 1j * self.Lambda_im
        b = self.B[..., 0] + 1j * self.B[..., 1]
        step = jnp.exp(self.log_step[:, 0])
        return discretize_bilinear(lam, b, step)

    def __call__(self, u: jax.Array, reset: jax.Array, x0: jax.Array, x_prev: jax.Array):
        """u (B, T, H) f32, reset (B, T) bool, x0 (P,) c64, x_prev (B, P) c64 -> (y (B, T, H), x (B, T, P))."""
        a_bar, b_bar = self.discrete()
        # real input and real output: two real matmuls each instead of one complex (four real) matmul
        bu = jnp.einsum("ph,bth->btp", b_bar.real, u) + 1j * jnp.einsum("ph,bth->btp", b_bar.imag, u)
        if u.shape[1] == 1:
            x_in = jnp.where(reset[:, 0, None], x0, x_prev)
            xs = (a_bar * x_in + bu[:, 0])[:, None]
        else:
            xs = linear_scan(*recurrence_elements(a_bar, bu, reset, x0, x_prev))
        c_re, c_im = self.C[..., 0], self.C[..., 1]
        y = jnp.einsum("hp,btp->bth", c_re, xs.real) - jnp.einsum("hp,btp->bth", c_im, xs.imag) + self.D * u
        return y, xs


class SSMLayer(nn.Module):
    """y = LayerNorm(u + gate(GELU(S5(u)))), gate(z) = Dense(z) * sigmoid(Dense(z)) (post-norm, no dropout).

    Owns its learned complex initial state `initial_hidden` (P, 2).
    """

    cfg: SSMConfig

    @nn.compact
    def __call__(self, u: jax.Array, reset: jax.Array, x_prev: jax.Array):
        """u (B, T, H), reset (B, T) bool, x_prev (B, P) c64 -> (out (B, T, H), x (B, T, P) c64)."""
        x0 = self.param("initial_hidden", nn.initializers.zeros, (self.cfg.hidden, 2))
        y, xs = S5Cell(self.cfg, name="cell")(u, reset, x0[:, 0] + 1j * x0[:, 1], x_prev)
        y = jax.nn.gelu(y)
        y = nn.Dense(self.cfg.units)(y) * jax.nn.sigmoid(nn.Dense(self.cfg.units)(y))
        return nn.LayerNorm()(u + y), xs


class SSMStack(nn.Module):
    """`layers` SSM layers, their parameters stacked on a leading axis and applied with a scan, so compile time
    does not grow with depth. Hidden states are (B, L, P) complex64; calling with T == 1 is the one-step recurrence.
    """

    cfg: SSMConfig

    def setup(self) -> None:
        self.layers = nn.scan(
            SSMLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, 1),
            out_axes=2,
            length=self.cfg.layers,
        )(self.cfg)

    def initial(self) -> jax.Array:
        """Learned initial state (L, P) complex64."""
        x0 = self.layers.variables["params"]["initial_hidden"]
        return x0[..., 0] + 1j * x0[..., 1]

    def __call__(self, u: jax.Array, reset: jax.Array, x_prev: jax.Array):
        """u (B, T, H), reset (B, T) bool, x_prev (B, L, P) c64 -> (out (B, T, H), hidden (B, T, L, P) c64)."""
        return self.layers(u, reset, x_prev)
