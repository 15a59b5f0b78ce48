"""R2I world model: non-recurrent posterior q(z_t | o_t), SSM prior path, decoders, reward and continue heads.

Step layout (docs/interfaces.md): `action[t]` is chosen after seeing obs t, so the prior at t is computed from
(z_{t-1}, a_{t-1}); `is_first[t]` replaces (hidden, z_{t-1}, a_{t-1}) by the learned initial state / zeros.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from agent import nets
from agent.config import AgentConfig
from agent.nets import sg
from agent.ssm import SSMStack

ObsSpec = tuple[tuple[str, tuple[int, ...]], ...]  # sorted ((key, shape), ...), hashable for module fields


class Latent(NamedTuple):
    """Model state at one or many steps (leading dims `...` = (N,) or (B, T))."""

    hidden: jax.Array  # (..., L, P) c64: SSM states after this step's input
    deter: jax.Array  # (..., deter) f32: h_t
    stoch: jax.Array  # (..., S * K) f32: one-hot z_t (straight-through)


class WorldModel(nn.Module):
    cfg: AgentConfig
    obs_spec: ObsSpec
    num_actions: int

    def setup(self) -> None:
        c = self.cfg
        spec = dict(self.obs_spec)
        w, eps, dt = c.winit, c.norm_eps, c.compute_dtype
        if "image" in spec:
            self.image_enc = nets.ImageEncoder(c.cnn_depth, w, eps, dt)
            self.image_dec = nets.ImageDecoder(c.cnn_depth, c.decoder, w, eps, dt)
        if "vector" in spec:
            self.vector_enc = nets.MLP(c.mlp_layers, c.mlp_units, winit=w, eps=eps, dtype=dt)
            self.vector_dec = nets.MLP(c.mlp_layers, c.mlp_units, out=spec["vector"][0], winit=w, eps=eps, dtype=dt)
        self.obs_out = nets.DenseNorm(c.ssm.units, w, eps, dt)
        self.obs_stats = nn.Dense(c.stoch_size, kernel_init=nets.kernel_init(w, out=True), dtype=dt)
        self.img_in = nets.DenseNorm(c.ssm.units, w, eps, dt)
        self.seq = SSMStack(c.ssm)
        self.out_proj = nn.Dense(c.deter, kernel_init=nets.kernel_init(w), dtype=dt)
        self.img_out = nets.DenseNorm(c.ssm.units, w, eps, dt)
        self.img_stats = nn.Dense(c.stoch_size, kernel_init=nets.kernel_init(w, out=True), dtype=dt)
        self.reward_head = nets.MLP(c.head_layers, c.head_units, out=c.bins, zero_out=True, winit=w, eps=eps,
                                    dtype=dt)
        self.cont_head = nets.MLP(c.head_layers, c.head_units, out=1, winit=w, eps=eps, dtype=dt)
        self.initial_deter = self.param("initial_deter", nn.initializers.zeros, (c.deter,))

    # ------------------------------------------------------------------------------------------ components

    def _stats(self, x: jax.Array) -> jax.Array:
        logits = x.astype(jnp.float32).reshape((*x.shape[:-1], self.cfg.stoch, self.cfg.classes))
        return nets.unimix_logits(logits, self.cfg.unimix)

    def latent(self, key: jax.Array, logp: jax.Array) -> jax.Array:
        """log-probs (..., S, K) -> one-hot z (..., S * K): a sample, or the mode with `sample_latents=False`."""
        z = nets.sample_onehot(key, logp) if self.cfg.sample_latents else nets.mode_onehot_st(logp)
        return z.reshape((*logp.shape[:-2], -1))

    def posterior(self, obs: dict[str, jax.Array]) -> jax.Array:
        """obs {key: (..., *shape)} -> log-probs (..., S, K) of q(z | o)."""
        parts = []
        if "image" in obs and hasattr(self, "image_enc"):
            parts.append(self.image_enc(obs["image"]))
        if "vector" in obs and hasattr(self, "vector_enc"):
            parts.append(self.vector_enc(nets.symlog(obs["vector"].astype(jnp.float32))))
        embed = jnp.concatenate(parts, -1)
        return self._stats(self.obs_stats(self.obs_out(embed)))

    def prior(self, deter: jax.Array) -> jax.Array:
        """deter (..., deter) -> log-probs (..., S, K) of p(z | h)."""
        return self._stats(self.img_stats(self.img_out(deter)))

    def initial_stoch(self, n: int) -> jax.Array:
        """Learned initial z (n, S * K): the prior mode at tanh(initial_deter). The initial SSM state is owned by
        the SSM layers and installed by the reset flag."""
        stoch = nets.mode_onehot(self.prior(jnp.tanh(self.initial_deter))).reshape(-1)
        return jnp.broadcast_to(stoch, (n, stoch.shape[0]))

    def sequence(self, stoch_prev, action_prev, reset, hidden_prev):
        """Prior path. stoch_prev (B, T, S*K), action_prev (B, T, A) one-hot, reset (B, T) bool,
        hidden_prev (B, L, P) -> (deter (B, T, deter), hidden (B, T, L, P))."""
        u = self.img_in(jnp.concatenate([stoch_prev, action_prev], -1))
        out, hidden = self.seq(u.astype(jnp.float32), reset, hidden_prev)  # the SSM layers stay float32
        return jax.nn.silu(self.out_proj(out)).astype(jnp.float32), hidden

    def heads(self, deter: jax.Array, stoch: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> reward logits (..., bins), continue logit (...)."""
        feat = jnp.concatenate([deter, stoch], -1)
        return self.reward_head(feat), self.cont_head(feat)[..., 0]

    def decode(self, deter: jax.Array, stoch: jax.Array) -> dict[str, jax.Array]:
        feat = jnp.concatenate([deter, stoch], -1)
        out = {}
        if hasattr(self, "image_dec"):
            out["image"] = self.image_dec(feat)
        if hasattr(self, "vector_dec"):
            out["vector"] = self.vector_dec(feat)
        return out

    # ---------------------------------------------------------------------------------------------- modes

    def loss(self, batch: dict[str, jax.Array], key: jax.Array):
        """Training over (B, T) with a parallel scan; every sequence starts from the learned initial state.

        Returns (loss scalar, (posterior Latent (B, T, ...), metrics dict)).
        """
        c = self.cfg
        is_first = jnp.asarray(batch["is_first"], bool).at[:, 0].set(True)
        bsz, length = is_first.shape
        obs = {k: batch[k] for k, _ in self.obs_spec}
        post_logp = self.posterior(obs)  # (B, T, S, K)
        stoch = self.latent(key, post_logp)
        action = jax.nn.one_hot(batch["action"], self.num_actions)
        init_stoch = self.initial_stoch(bsz)
        stoch_prev = jnp.concatenate([init_stoch[:, None], stoch[:, :-1]], 1)
        stoch_prev = jnp.where(is_first[..., None], init_stoch[:, None], stoch_prev)
        action_prev = jnp.concatenate([jnp.zeros_like(action[:, :1]), action[:, :-1]], 1)
        action_prev = jnp.where(is_first[..., None], 0.0, action_prev)
        no_state = jnp.zeros((bsz, c.ssm.layers, c.ssm.hidden), jnp.complex64)  # unused: is_first[:, 0] is set
        deter, hidden = self.sequence(stoch_prev, action_prev, is_first, no_state)
        prior_logp = self.prior(deter)

        dyn, rep, dyn_loss, rep_loss = kl_balance(post_logp, prior_logp, c.free_nats, c.dyn_scale, c.rep_scale)
        losses = {"dyn": dyn_loss, "rep": rep_loss}
        recon = self.decode(deter, stoch)
        if "image" in recon:
            target = batch["image"].astype(jnp.float32) / 255.0
            losses["image"] = jnp.sum((recon["image"] - target) ** 2, (-3, -2, -1)) * c.image_scale
        if "vector" in recon:
            target = nets.symlog(batch["vector"].astype(jnp.float32))
            losses["vector"] = jnp.sum((recon["vector"] - target) ** 2, -1) * c.vector_scale
        reward_logits, cont_logit = self.heads(deter, stoch)
        reward = batch["reward"].astype(jnp.float32)
        losses["reward"] = -nets.TwoHotSymlog(reward_logits).log_prob(reward) * c.reward_scale
        cont_target = 1.0 - batch["is_terminal"].astype(jnp.float32)
        losses["cont"] = -nets.bernoulli_log_prob(cont_logit, cont_target) * c.cont_scale
        total = sum(v.mean() for v in losses.values())
        metrics = {f"wm/{k}_loss": v.mean() for k, v in losses.items()}
        metrics.update({
            "wm/dyn_kl": dyn.mean(),
            "wm/rep_kl": rep.mean(),
            "wm/post_ent": nets.categorical_entropy(post_logp).sum(-1).mean(),
            "wm/prior_ent": nets.categorical_entropy(prior_logp).sum(-1).mean(),
            "wm/reward_mae": jnp.abs(nets.TwoHotSymlog(reward_logits).mean() - reward).mean(),
            "wm/cont_acc": ((cont_logit > 0) == (cont_target > 0.5)).mean(),
        })
        return total, (Latent(hidden, deter, stoch), metrics)

    def img_step(self, hidden, stoch, action, key) -> Latent:
        """One imagined step. hidden (N, L, P), stoch (N, S*K), action (N, A) one-hot -> next Latent (N, ...)."""
        reset = jnp.zeros((stoch.shape[0], 1), bool)
        deter, hidden = self.sequence(stoch[:, None], action[:, None], reset, hidden)
        deter, hidden = deter[:, 0], hidden[:, 0]
        stoch = self.latent(key, self.prior(deter))
        return Latent(hidden, deter, stoch)

    def obs_step(self, hidden, stoch, action, is_first, obs, key) -> Latent:
        """One acting step. hidden (N, L, P), stoch (N, S*K), action (N, A) one-hot from the previous step,
        is_first (N,) bool, obs {key: (N, *shape)} -> Latent (N, ...) of this step (posterior stoch)."""
        stoch = jnp.where(is_first[:, None], self.initial_stoch(stoch.shape[0]), stoch)
        action = jnp.where(is_first[:, None], 0.0, action)
        deter, hidden = self.sequence(stoch[:, None], action[:, None], is_first[:, None], hidden)
        post = self.latent(key, self.posterior(obs))
        return Latent(hidden[:, 0], deter[:, 0], post)


def kl_balance(post_logp: jax.Array, prior_logp: jax.Array, free: float, dyn_scale: float, rep_scale: float):
    """KL balancing with free bits on KL summed over latents. Log-probs (..., S, K) -> (dyn_kl, rep_kl,
    dyn_loss = dyn_scale * max(free, KL[sg(q) || p]), rep_loss = rep_scale * max(free, KL[q || sg(p)])), each (...)."""
    dyn = nets.categorical_kl(sg(post_logp), prior_logp)
    rep = nets.categorical_kl(post_logp, sg(prior_logp))
    return dyn, rep, dyn_scale * jnp.maximum(dyn, free), rep_scale * jnp.maximum(rep, free)


def ac_features(latent: Latent, with_deter: bool) -> jax.Array:
    """Actor/critic input [deter?, stoch, Re(hidden), Im(hidden)] (..., F)."""
    lead = latent.stoch.shape[:-1]
    hid = latent.hidden.reshape((*lead, -1))
    parts = ([latent.deter] if with_deter else []) + [latent.stoch, hid.real, hid.imag]
    return jnp.concatenate(parts, -1)
