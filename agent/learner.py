"""Learner factory: pure, jit-able init / train_step / policy_step over explicit pytrees, plus (de)serialisation."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agent import actor_critic as ac
from agent import nets
from agent.config import AgentConfig, ConfigError, OptConfig
from agent.nets import sg
from agent.world_model import ObsSpec, WorldModel, ac_features

SSM_LEAVES = frozenset({"Lambda_re", "Lambda_im", "B", "C", "D", "log_step"})
Batch = dict[str, jax.Array]  # (B, T, ...) arrays as the replay buffer returns them


@flax.struct.dataclass
class TrainState:
    params: dict  # {"wm", "actor", "critic"}: flax variable dicts
    slow_critic: dict  # EMA copy of params["critic"]
    opt_state: optax.OptState  # multi_transform over groups model / ssm / actor / critic
    retnorm: ac.RetNorm  # () f32 percentile EMAs
    step: jax.Array  # () int32 updates done


class PolicyCarry(NamedTuple):
    """Per-env recurrent state for acting; real arrays only, so it serialises anywhere."""

    hidden_re: jax.Array  # (W, L, P) f32
    hidden_im: jax.Array  # (W, L, P) f32
    stoch: jax.Array  # (W, S * K) f32 one-hot z_{t-1}
    action: jax.Array  # (W, A) f32 one-hot a_{t-1}


class Learner(NamedTuple):
    init: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]
    init_policy_carry: Callable[[int], PolicyCarry]
    # (params, carry, obs, is_first, key, uniform=False) -> (carry, action)
    policy_step: Callable[..., tuple[PolicyCarry, jax.Array]]
    state_to_bytes: Callable[[TrainState], bytes]
    state_from_bytes: Callable[[TrainState, bytes], TrainState]
    batch_spec: Callable[[int, int], dict]  # (B, T) -> {key: jax.ShapeDtypeStruct}
    policy_params: Callable[[dict], dict]  # params -> the part `policy_step` reads (what a lagged policy keeps)


def normalize_obs_spec(obs_spec: Mapping[str, Any]) -> ObsSpec:
    """{key: FieldSpec | shape} -> sorted ((key, shape), ...); only `image` (64, 64, 3) and `vector` (D,)."""
    out = {}
    for key, spec in obs_spec.items():
        shape = tuple(int(s) for s in getattr(spec, "shape", spec))
        if key == "image" and shape != (64, 64, 3):
            raise ConfigError(f"obs_spec['image'] must have shape (64, 64, 3), got {shape}")
        if key == "vector" and len(shape) != 1:
            raise ConfigError(f"obs_spec['vector'] must be 1-D, got shape {shape}")
        if key not in ("image", "vector"):
            raise ConfigError(f"obs_spec key {key!r} is not supported (expected 'image' and/or 'vector')")
        out[key] = shape
    if not out:
        raise ConfigError("obs_spec is empty: need 'image' and/or 'vector'")
    return tuple(sorted(out.items()))


def _labels(params: dict, per_leaf: bool = False) -> dict:
    """Optimiser group of each leaf: model / ssm / actor / critic; with `per_leaf`, ssm/<leaf name>."""

    def label(path, _):
        group = path[0].key
        if group == "wm":
            name = path[-1].key
            return ("ssm/" + name if per_leaf else "ssm") if name in SSM_LEAVES else "model"
        return group

    return jax.tree_util.tree_map_with_path(label, params)


def _kernel_mask(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def _group(o: OptConfig) -> optax.GradientTransformation:
    # flatten: one fused vector per group instead of per-leaf ops, which cuts XLA CPU compile time ~3x
    parts = [optax.flatten(optax.chain(optax.clip_by_global_norm(o.clip), optax.scale_by_adam(eps=o.eps)))]
    if o.wd:
        parts.append(optax.add_decayed_weights(o.wd, mask=_kernel_mask))
    parts.append(optax.scale(-o.lr))
    return optax.chain(*parts)


def make_optimizer(cfg: AgentConfig) -> optax.GradientTransformation:
    """One multi_transform: per-group Adam(W) with clipping inside the group; the SSM group has no weight decay.

    With `cfg.ssm_clip == "per_leaf"` each SSM leaf name is a group of its own (same settings), so each clips
    on its own global norm, as the reference's per-name groups do.
    """
    ssm = OptConfig(cfg.ssm_opt.lr, cfg.ssm_opt.eps, cfg.ssm_opt.clip, 0.0)
    per_leaf = cfg.ssm_clip == "per_leaf"
    ssm_names = [f"ssm/{name}" for name in sorted(SSM_LEAVES)] if per_leaf else ["ssm"]
    groups = {"model": _group(cfg.model_opt), **{name: _group(ssm) for name in ssm_names},
              "actor": _group(cfg.actor_opt), "critic": _group(cfg.critic_opt)}
    return optax.multi_transform(groups, functools.partial(_labels, per_leaf=per_leaf))


def _group_norms(grads: dict) -> dict:
    labels = _labels(grads)
    out = {}
    for name in ("model", "ssm", "actor", "critic"):
        leaves = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels), strict=True) if lab == name]
        out[f"grad_norm/{name}"] = optax.tree.norm(leaves)
    return out


def make_learner(cfg: AgentConfig, obs_spec: Mapping[str, Any], num_actions: int) -> Learner:
    """Bind the static config and return pure functions (see `Learner`). `num_actions` discrete actions."""
    spec = normalize_obs_spec(obs_spec)
    if num_actions < 1:
        raise ConfigError(f"num_actions must be >= 1, got {num_actions}")
    wm = WorldModel(cfg, spec, num_actions)
    actor = ac.Actor(cfg, num_actions)
    critic = ac.Critic(cfg)
    opt = make_optimizer(cfg)
    ssm = cfg.ssm
    feat_dim = (cfg.deter if cfg.ac_deter else 0) + cfg.stoch_size + 2 * ssm.layers * ssm.hidden

    def batch_spec(bsz: int, length: int) -> dict:
        out = {k: jax.ShapeDtypeStruct((bsz, length, *s), jnp.uint8 if k == "image" else jnp.float32)
               for k, s in spec}
        out["reward"] = jax.ShapeDtypeStruct((bsz, length), jnp.float32)
        out["action"] = jax.ShapeDtypeStruct((bsz, length), jnp.int32)
        for k in ("is_first", "is_last", "is_terminal"):
            out[k] = jax.ShapeDtypeStruct((bsz, length), jnp.bool_)
        return out

    def init(key: jax.Array) -> TrainState:
        k_wm, k_actor, k_critic, k_sample = jax.random.split(key, 4)
        dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), batch_spec(1, 2))
        feat = jnp.zeros((1, feat_dim))
        params = {
            "wm": wm.init(k_wm, dummy, k_sample, method=WorldModel.loss),
            "actor": actor.init(k_actor, feat),
            "critic": critic.init(k_critic, feat),
        }
        return TrainState(params, params["critic"], opt.init(params), ac.RetNorm.zeros(), jnp.zeros((), jnp.int32))

    def wm_loss(wm_params, batch, key):
        return wm.apply(wm_params, batch, key, method=WorldModel.loss)

    def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
        k_wm, k_img = jax.random.split(jax.random.fold_in(key, state.step))
        params = state.params
        (_, (post, metrics)), wm_grads = jax.value_and_grad(wm_loss, has_aux=True)(params["wm"], batch, k_wm)

        # imagination from all B*T posterior states with the pre-update world model and actor, no gradients
        frozen = sg(params)
        start = jax.tree.map(lambda x: sg(x).reshape((-1, *x.shape[2:])), post)
        start_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)

        def img_step(hidden, stoch, action, k):
            return wm.apply(frozen["wm"], hidden, stoch, action, k, method=WorldModel.img_step)

        def policy(feat):
            return actor.apply(frozen["actor"], feat)

        traj, actions = ac.imagine(img_step, policy, start, num_actions, cfg.imag_horizon, k_img, cfg.ac_deter)
        feat = ac_features(traj, cfg.ac_deter)  # (H+1, N, F)
        rew_logits, cont_logit = wm.apply(frozen["wm"], traj.deter, traj.stoch, method=WorldModel.heads)
        reward = nets.TwoHotSymlog(rew_logits).mean()[1:]
        cont = jnp.concatenate([start_cont[None], (cont_logit[1:] > 0).astype(jnp.float32)], 0)
        value = nets.TwoHotSymlog(critic.apply(frozen["critic"], feat)).mean()
        ret = ac.lambda_returns(reward, cont[1:], value, cfg.gamma, cfg.lam)
        weight = ac.trajectory_weight(cont, cfg.gamma)[:-1]
        retnorm, scale = ac.update_retnorm(state.retnorm, ret, cfg)
        adv = (ret - value[:-1]) / scale

        def actor_objective(actor_params):
            logp = actor.apply(actor_params, feat[:-1])
            return ac.actor_loss(logp, actions, adv, weight, cfg.actent)

        (a_loss, ent), actor_grads = jax.value_and_grad(actor_objective, has_aux=True)(params["actor"])
        slow_mean = nets.TwoHotSymlog(critic.apply(state.slow_critic, feat[:-1])).mean()

        def critic_objective(critic_params):
            logits = critic.apply(critic_params, feat[:-1])
            return ac.critic_loss(logits, ret, slow_mean, weight, cfg.slow_critic_reg)

        c_loss, critic_grads = jax.value_and_grad(critic_objective)(params["critic"])

        grads = {"wm": wm_grads, "actor": actor_grads, "critic": critic_grads}
        updates, opt_state = opt.update(grads, state.opt_state, params)
        new_params = optax.apply_updates(params, updates)
        rate = cfg.slow_critic_rate
        slow = jax.tree.map(lambda s, p: (1 - rate) * s + rate * p, state.slow_critic, new_params["critic"])
        metrics.update(_group_norms(grads))
        metrics.update({
            "actor/loss": a_loss,
            "actor/entropy": ent.mean(),
            "critic/loss": c_loss,
            "critic/value": value.mean(),
            "imag/return": ret.mean(),
            "imag/reward": reward.mean(),
            "imag/adv_abs": jnp.abs(adv).mean(),
            "retnorm/low": retnorm.low,
            "retnorm/high": retnorm.high,
            "retnorm/scale": scale,
        })
        new_state = TrainState(new_params, slow, opt_state, retnorm, state.step + 1)
        return new_state, metrics

    def init_policy_carry(num_envs: int) -> PolicyCarry:
        """Zero carry; the first `policy_step` must have is_first=True for every env (it installs the init state)."""
        zeros = jnp.zeros((num_envs, ssm.layers, ssm.hidden), jnp.float32)
        return PolicyCarry(zeros, zeros, jnp.zeros((num_envs, cfg.stoch_size)), jnp.zeros((num_envs, num_actions)))

    def policy_step(params: dict, carry: PolicyCarry, obs: dict, is_first: jax.Array, key: jax.Array,
                    uniform: bool = False, mode: str = "explore"):
        """obs {key: (W, *shape)}, is_first (W,) bool -> (carry, action (W,) int32). Static: `uniform` (the loop's
        prefill) draws uniform random actions from the same key; else `mode`: explore = a draw from the actor
        mixed with `act_explore` (acting in training); sample = a draw from the actor; mode = the actor's argmax
        (the last two for evaluation)."""
        if mode not in ("explore", "sample", "mode"):
            raise ValueError(f"policy_step: mode={mode!r} must be explore, sample or mode")
        k_post, k_act = jax.random.split(key)
        hidden = carry.hidden_re + 1j * carry.hidden_im
        obs = {k: obs[k] for k, _ in spec}
        lat = wm.apply(params["wm"], hidden, carry.stoch, carry.action, is_first.astype(bool), obs, k_post,
                       method=WorldModel.obs_step)
        if uniform:
            action = jax.random.randint(k_act, is_first.shape, 0, num_actions, jnp.int32)
        else:
            logp = actor.apply(params["actor"], ac_features(lat, cfg.ac_deter))
            if mode == "explore" and cfg.act_explore > 0:  # static: a run without it keeps its exact action stream
                logp = nets.unimix_logits(logp, cfg.act_explore)
            if mode == "mode":
                action = jnp.argmax(logp, -1).astype(jnp.int32)
            else:
                action = jax.random.categorical(k_act, logp).astype(jnp.int32)
        new = PolicyCarry(lat.hidden.real, lat.hidden.imag, lat.stoch, jax.nn.one_hot(action, num_actions))
        return new, action

    def state_to_bytes(state: TrainState) -> bytes:
        return flax.serialization.to_bytes(jax.device_get(state))

    def state_from_bytes(template: TrainState, data: bytes) -> TrainState:
        """Restore into the structure of `template` (e.g. `init(any_key)`); raises on a structure mismatch."""
        return flax.serialization.from_bytes(template, data)

    def policy_params(params: dict) -> dict:
        return {"wm": params["wm"], "actor": params["actor"]}

    return Learner(init, train_step, init_policy_carry, policy_step, state_to_bytes, state_from_bytes, batch_spec,
                   policy_params)


def params_from_bytes(learner: Learner, data: bytes) -> dict:
    """The params of a committed agent state (`state_to_bytes`), as device arrays; the structure comes from
    `learner.init`, so a state of another config raises."""
    template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    return jax.tree.map(jnp.asarray, learner.state_from_bytes(template, data).params)


def data_mesh(devices: list | None = None) -> Mesh:
    """1-D mesh named "data" over `devices` (default: all)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(devices, ("data",))


def jit_train_step(learner: Learner, mesh: Mesh | None = None, donate: bool = False):
    """jit `learner.train_step`; with `mesh`, the batch is sharded on B and the state replicated (data parallel).

    B must be divisible by the mesh size. Gradients are reduced by XLA's partitioner, so results match one device
    up to float summation order.
    """
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(learner.train_step, donate_argnums=donate_argnums)
    repl = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(learner.train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                   donate_argnums=donate_argnums)
