"""Typed configuration of the R2I algorithm core (the `agent` hydra group).

All dataclasses are frozen. OmegaConf marks every node of a frozen structured config read-only, so merging YAML
into `OmegaConf.structured(AgentConfig)` fails; use `structured_schema` (a thawed schema that still rejects
unknown keys and wrong types) or `agent_config_from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value the agent cannot work with."""


@dataclass(frozen=True)
class SSMConfig:
    """S5-style SSM stack: `layers` layers of width `units` (H) with `hidden` (P) complex states each."""

    units: int = 1024  # H: width of the layer input/output
    hidden: int = 128  # P: complex state size per layer
    layers: int = 4
    blocks: int = 8  # HiPPO-LegS is initialised in `blocks` diagonal blocks of size P / blocks
    dt_min: float = 1e-3  # log_step ~ U[ln dt_min, ln dt_max]
    dt_max: float = 0.1
    # initial Re(Lambda) of every state (HiPPO-LegS normal part: -0.5). A one-step input keeps at most
    # max_dt dt * exp(lambda_re * dt * L) of its size after L steps: ~4% for L = 20 at -0.5, ~37% at -0.05 (dt = 1)
    lambda_re: float = -0.5
    # B and C before their rotation into the HiPPO eigenbasis. "fan_in": real and imaginary parts each
    # N(0, 1/H) for B and N(0, 1/P) for C (the fan-in of their products). "reference": jax's lecun_normal on
    # the reference's layouts, i.e. a real truncated normal B (P, H) of std 1/sqrt(P) (its fan-in axis is P) and
    # C (H, P, 2) of std 1/sqrt(P * H) (the H axis counts as receptive field): C starts sqrt(H) times smaller.
    bc_init: str = "fan_in"


@dataclass(frozen=True)
class OptConfig:
    """One optimiser group: Adam(W) with global-norm clipping computed within the group."""

    lr: float = 1e-4
    eps: float = 1e-8
    clip: float = 1000.0
    wd: float = 0.0  # decoupled weight decay, applied to `kernel` leaves only


@dataclass(frozen=True)
class AgentConfig:
    """Model widths, loss scales, actor-critic hyperparameters and optimiser groups (defaults: reference).

    The switches between the reference's choice and this project's earlier one (`winit`, `norm_eps`, `decoder`,
    `ssm_clip`, `prefill_actions`, `ssm.bc_init`) default to the earlier choice, so runs and recipes recorded
    with it keep their bits and stay resumable; the paper presets (`mmaze`, `popgym`) set the reference's.
    docs/reference-deviations.md lists each one.
    """

    # latents and deterministic state
    deter: int = 4096
    stoch: int = 32  # number of categorical latents
    classes: int = 32  # classes per latent
    unimix: float = 0.01
    # z_t passed on (SSM input, decoder, heads, actor): a sample of its categoricals (reference), or their mode.
    # Latents the reconstruction does not need keep a high-entropy posterior, and their samples enter the linear
    # SSM afresh at every step; a one-step cue (T-Maze) is then a faint signal beside ~20 steps of that noise and
    # the world model did not learn to carry it (README). The mode keeps only what the posterior is sure of.
    sample_latents: bool = True
    ssm: SSMConfig = field(default_factory=SSMConfig)
    # encoders / decoders
    cnn_depth: int = 96
    mlp_layers: int = 5  # vector encoder and decoder
    mlp_units: int = 1024
    # reward, cont, actor, critic heads
    head_layers: int = 5
    head_units: int = 1024
    bins: int = 255  # two-hot bins on symlog [-20, 20]
    # world-model loss
    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    free_nats: float = 1.0  # per step, on KL summed over all latents
    image_scale: float = 1.0
    vector_scale: float = 1.0
    reward_scale: float = 1.0
    cont_scale: float = 1.0
    # actor-critic in imagination
    imag_horizon: int = 15
    discount_horizon: float = 333.0  # gamma = 1 - 1 / discount_horizon
    lam: float = 0.95
    actent: float = 3e-4
    actor_unimix: float = 0.01
    # acting only: the env gets a uniform action with this probability. The actor learns in imagination, so
    # the extra data (e.g. the other T-Maze arm) reaches the world model without biasing the actor's gradient.
    act_explore: float = 0.0
    retnorm_decay: float = 0.99
    retnorm_low: float = 5.0  # percentile
    retnorm_high: float = 95.0
    slow_critic_rate: float = 0.02
    slow_critic_reg: float = 1.0
    ac_deter: bool = True  # actor/critic input [deter?, stoch, hidden]; popgym uses [stoch, hidden]
    # Dense and conv kernels outside the SSM layers. "fan_in": flax's lecun_normal everywhere. "fan_avg": the
    # reference's, a truncated normal on fan_avg in hidden layers and out_proj, uniform on fan_avg in the layers
    # that produce logits, the decoded observation or the decoder's first map (zeros stay zeros). The SSM
    # layers' own Dense and LayerNorm are flax defaults in both, as in the reference.
    winit: str = "fan_in"
    norm_eps: float = 1e-6  # LayerNorm epsilon outside the SSM layers (reference: 1e-3)
    # image decoder upsampling 4 -> 64 px: "pixel_shuffle" (3x3 conv + depth_to_space, cheaper on CPU) or
    # "transpose" (the reference's stride-2 4x4 transposed convs)
    decoder: str = "pixel_shuffle"
    # global-norm clipping of the SSM group: "group" clips all SSM leaves together, "per_leaf" clips each leaf
    # name (Lambda_re, Lambda_im, B, C, D, log_step; all layers together) on its own, as the reference's
    # per-name optimiser groups do. Adam and the learning rate are the same either way.
    ssm_clip: str = "group"
    # actions while the loop prefills (`train.prefill` env steps): "actor" samples the untrained actor (the
    # reference's `parallel` script, Memory Maze), "uniform" draws uniform random actions (its `train` script,
    # POPGym). The posterior still advances the policy carry on the chosen action.
    prefill_actions: str = "actor"
    # compute dtype of the dense, conv and norm layers outside the SSM: "bfloat16" halves their memory traffic
    # and runs on tensor cores. Params, optimiser state and the SSM scan stay float32, and every network's output
    # (logits, decoded observations, deter) is float32 before any loss reduction.
    precision: str = "float32"
    # optimiser groups
    model_opt: OptConfig = field(default_factory=lambda: OptConfig(1e-4, 1e-8, 1000.0, 0.0))
    ssm_opt: OptConfig = field(default_factory=lambda: OptConfig(1e-4, 1e-8, 1000.0, 0.0))
    actor_opt: OptConfig = field(default_factory=lambda: OptConfig(3e-5, 1e-5, 100.0, 0.0))
    critic_opt: OptConfig = field(default_factory=lambda: OptConfig(3e-5, 1e-5, 100.0, 0.0))

    def __post_init__(self) -> None:
        s = self.ssm
        if s.hidden % s.blocks:
            raise ConfigError(f"agent.ssm.hidden={s.hidden} must be a multiple of agent.ssm.blocks={s.blocks}")
        if not 0 < s.dt_min < s.dt_max:
            raise ConfigError(f"agent.ssm needs 0 < dt_min < dt_max, got {s.dt_min}, {s.dt_max}")
        if self.bins < 2 or self.imag_horizon < 1 or self.discount_horizon <= 1:
            raise ConfigError(
                f"agent: bins={self.bins}, imag_horizon={self.imag_horizon}, "
                f"discount_horizon={self.discount_horizon} out of range"
            )
        if not 0 <= self.act_explore <= 1:
            raise ConfigError(f"agent.act_explore={self.act_explore} must be a probability in [0, 1]")
        if s.bc_init not in ("fan_in", "reference"):
            raise ConfigError(f"agent.ssm.bc_init={s.bc_init!r} must be 'fan_in' or 'reference'")
        choices = {"winit": ("fan_in", "fan_avg"), "decoder": ("pixel_shuffle", "transpose"),
                   "ssm_clip": ("group", "per_leaf"), "prefill_actions": ("actor", "uniform"),
                   "precision": ("float32", "bfloat16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"agent.{key}={getattr(self, key)!r} must be one of {list(allowed)}")
        if not 0 < self.norm_eps < 1:
            raise ConfigError(f"agent.norm_eps={self.norm_eps} must be in (0, 1)")
        if not 0 <= self.retnorm_low < self.retnorm_high <= 100:
            raise ConfigError(f"agent: percentiles {self.retnorm_low}/{self.retnorm_high} out of order")

    @property
    def gamma(self) -> float:
        return 1.0 - 1.0 / self.discount_horizon

    @property
    def stoch_size(self) -> int:
        return self.stoch * self.classes

    @property
    def compute_dtype(self) -> Any:
        return jnp.bfloat16 if self.precision == "bfloat16" else jnp.float32


def _thaw(node: Any) -> Any:
    node._set_flag("readonly", None)
    if isinstance(node, DictConfig):
        for key in node.keys():
            _thaw(node._get_node(key))
    return node


def structured_schema(cls: type = AgentConfig) -> DictConfig:
    """`OmegaConf.structured(cls)` with the read-only flags of frozen dataclasses lifted, so YAML can be merged."""
    return _thaw(OmegaConf.structured(cls))


def agent_config_from(values: Mapping[str, Any] | DictConfig) -> AgentConfig:
    """Validate `values` (e.g. `experiments/agent/<preset>.yaml`) against `AgentConfig`; unknown keys raise."""
    merged = OmegaConf.merge(structured_schema(AgentConfig), values)
    return OmegaConf.to_object(merged)
