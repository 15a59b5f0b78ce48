"""Typed configuration of the R2I algorithm core (the `agent` hydra group).

All dataclasses are frozen. OmegaConf marks every node of a frozen structured config read-only, so merging YAML
into `OmegaConf.structured(AgentConfig)` fails; use `structured_schema` (a thawed schema that still rejects
unknown keys and wrong types) or `agent_config_from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class OptConfig:
    """One optimiser group: Adam(W) with global-norm clipping computed within the group."""

    lr: float = 1e-4
    eps: float = 1e-8
    clip: float = 1000.0
    wd: float = 0.0  # decoupled weight decay, applied to `kernel` leaves only


@dataclass(frozen=True)
class AgentConfig:
    """Model widths, loss scales, actor-critic hyperparameters and optimiser groups (defaults: reference)."""

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
        if not 0 <= self.retnorm_low < self.retnorm_high <= 100:
            raise ConfigError(f"agent: percentiles {self.retnorm_low}/{self.retnorm_high} out of order")

    @property
    def gamma(self) -> float:
        return 1.0 - 1.0 / self.discount_horizon

    @property
    def stoch_size(self) -> int:
        return self.stoch * self.classes


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
