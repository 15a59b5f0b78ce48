"""The switches between the reference's choices and this project's earlier ones (docs/reference-deviations.md):
each does what it says, the defaults keep the earlier bits, the paper presets pick the reference's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from agent import nets
from agent.config import AgentConfig, ConfigError, SSMConfig, agent_config_from
from agent.envs import EnvConfig, VecEnv
from agent.envs.base import EnvConfigError
from agent.learner import SSM_LEAVES, make_learner, make_optimizer
from agent.ssm import S5Cell

REPO = Path(__file__).resolve().parents[2]


def preset(name: str) -> AgentConfig:
    return agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / f"{name}.yaml"))


def env_preset(name: str) -> EnvConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvConfig),
                                               OmegaConf.load(REPO / "experiments" / "env" / f"{name}.yaml")))


# ------------------------------------------------------------------------------------------------ presets

def test_paper_presets_pick_the_reference_and_the_others_keep_the_earlier_choice():
    for name in ("mmaze", "popgym"):
        c = preset(name)
        assert (c.winit, c.norm_eps, c.decoder, c.ssm_clip, c.ssm.bc_init) == \
            ("fan_avg", 1e-3, "transpose", "per_leaf", "reference"), name
    # Memory Maze ran under the `parallel` script (acts with the agent), POPGym under `train` (random prefill)
    assert (preset("mmaze").prefill_actions, preset("popgym").prefill_actions) == ("actor", "uniform")
    for name in ("tiny", "tmaze", "tmaze_small"):
        c = preset(name)
        assert (c.winit, c.norm_eps, c.decoder, c.ssm_clip, c.ssm.bc_init, c.prefill_actions) == \
            ("fan_in", 1e-6, "pixel_shuffle", "group", "fan_in", "actor"), name
    for path in sorted((REPO / "experiments" / "env").glob("*.yaml")):
        want = "truncation" if path.stem.startswith("tmaze") else "terminal"
        assert env_preset(path.stem).time_limit == want, path.stem


def test_bad_switch_values_name_their_key():
    for key, bad in (("winit", "xavier"), ("decoder", "upsample"), ("ssm_clip", "leaf"),
                     ("prefill_actions", "random"), ("norm_eps", 0.0)):
        with pytest.raises(ConfigError, match=f"agent.{key}="):
            AgentConfig(**{key: bad})
    with pytest.raises(ConfigError, match="agent.ssm.bc_init="):
        AgentConfig(ssm=SSMConfig(bc_init="lecun"))
    with pytest.raises(EnvConfigError, match="env.time_limit="):
        EnvConfig(time_limit="bootstrap")


def test_defaults_keep_the_config_digest_of_older_runs():
    from agent.train import config_digest
    from bench.learn import compose

    base = compose("tiny", "tmaze_passive", 3000, ["env.memory_length=5"], seed=0)
    explicit = dataclasses.replace(base, agent=dataclasses.replace(
        base.agent, winit="fan_in", norm_eps=1e-6, decoder="pixel_shuffle", ssm_clip="group",
        prefill_actions="actor", ssm=dataclasses.replace(base.agent.ssm, bc_init="fan_in")),
        env=dataclasses.replace(base.env, time_limit="truncation"))
    assert config_digest(explicit) == config_digest(base) == "d9ee706cf110c8c9"  # test_config_digest's golden
    assert config_digest(dataclasses.replace(base, agent=dataclasses.replace(base.agent, winit="fan_avg"))) != \
        config_digest(base)


# --------------------------------------------------------------------------------------------------- init

@pytest.mark.parametrize("bc_init", ["fan_in", "reference"])
def test_ssm_b_and_c_init_scales(bc_init):
    """Mean |entry|^2 after the (unitary, blockwise) HiPPO rotation, which keeps it: reference B is a real
    lecun_normal on (P, H), fan-in P -> 1/P; C is lecun_normal on (H, P, 2), fan-in P * H -> 2/(P H) over both
    parts. Ours: each part N(0, 1/H) for B -> 2/H and N(0, 1/P) for C -> 2/P."""
    h, p = 256, 64
    cfg = SSMConfig(units=h, hidden=p, layers=1, blocks=8, bc_init=bc_init)
    params = S5Cell(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, h)), jnp.zeros((1, 2), bool),
                              jnp.zeros((p,), jnp.complex64), jnp.zeros((1, p), jnp.complex64))["params"]
    b_power = float(jnp.mean(jnp.sum(params["B"] ** 2, -1)))
    c_power = float(jnp.mean(jnp.sum(params["C"] ** 2, -1)))
    want_b, want_c = (1 / p, 2 / (p * h)) if bc_init == "reference" else (2 / h, 2 / p)
    assert b_power == pytest.approx(want_b, rel=0.05)
    assert c_power == pytest.approx(want_c, rel=0.05)
    if bc_init == "reference":  # the issue in numbers: the reference's C is sqrt(H) = 16x smaller in std
        assert c_power * h == pytest.approx(2 / p, rel=0.05)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


@pytest.mark.parametrize("winit", ["fan_in", "fan_avg"])
def test_every_kernel_outside_the_ssm_has_the_scale_of_winit(winit):
    """Tiny preset with image and vector obs: every non-zero kernel of the world model (encoders, decoders,
    heads, stats, out_proj) and of actor and critic has std sqrt(1/fan_in), or sqrt(1/fan_avg) with `fan_avg`
    (truncated normal and uniform alike); kernels that cannot tell the two apart (square) are skipped."""
    cfg = dataclasses.replace(preset("tiny"), winit=winit)
    learner = make_learner(cfg, {"vector": (5,), "image": (64, 64, 3)}, 3)
    params = learner.init(jax.random.PRNGKey(0)).params
    checked = 0
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(k, "key", "") for k in path]
        if keys[-1] != "kernel" or "seq" in keys or not bool(jnp.any(w != 0)) or w.size < 512:
            continue
        fan_in, fan_out = _fans(w.shape)
        if abs(fan_in - fan_out) < 0.5 * max(fan_in, fan_out):
            continue
        want = np.sqrt(1 / fan_in) if winit == "fan_in" else np.sqrt(2 / (fan_in + fan_out))
        assert float(jnp.std(w)) == pytest.approx(want, rel=0.15), keys
        checked += 1
    assert checked >= 6


def test_fan_avg_output_layers_are_uniform_and_hidden_ones_truncated_normal():
    x = jnp.zeros((1, 1024))
    params = nets.MLP(1, 512, out=256, winit="fan_avg").init(jax.random.PRNGKey(0), x)["params"]
    hidden, out = params["DenseNorm_0"]["Dense_0"]["kernel"], params["Dense_0"]["kernel"]
    std_h = np.sqrt(2 / (1024 + 512))
    assert float(jnp.max(jnp.abs(hidden))) <= 2 * std_h / 0.87962566103423978 + 1e-6  # cut at 2 sigma
    assert float(jnp.std(hidden)) == pytest.approx(std_h, rel=0.02)
    limit = np.sqrt(3 * 2 / (512 + 256))
    assert float(jnp.max(jnp.abs(out))) <= limit and float(jnp.max(jnp.abs(out))) > 0.99 * limit
    assert float(jnp.std(out)) == pytest.approx(limit / np.sqrt(3), rel=0.02)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_norm_eps_reaches_the_layer_norm(eps):
    """DenseNorm with an identity kernel on x = (0.01, -0.01): mean 0, variance 1e-4, so the normalised
    value is 0.01 / sqrt(1e-4 + eps): 0.99995 at 1e-6, 0.30151 at 1e-3; then SiLU."""
    layer = nets.DenseNorm(2, eps=eps)
    params = {"params": {"Dense_0": {"kernel": jnp.eye(2)},
                         "LayerNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}}
    y = layer.apply(params, jnp.array([0.01, -0.01]))
    z = 0.01 / np.sqrt(1e-4 + eps)
    np.testing.assert_allclose(np.asarray(y), [z / (1 + np.exp(-z)), -z / (1 + np.exp(z))], rtol=1e-4)


# ------------------------------------------------------------------------------------------------ decoder

def test_transposed_conv_decoder_shape_and_gradient():
    depth, feat = 4, jax.random.normal(jax.random.PRNGKey(1), (2, 3, 20))
    dec = nets.ImageDecoder(depth, upsample="transpose")
    params = dec.init(jax.random.PRNGKey(0), feat)
    kernels = {k: v["kernel"].shape for k, v in params["params"].items() if k.startswith("ConvTranspose")}
    # four stride-2 4x4 transposed convs: 4d -> 2d -> d -> 3 channels at 8, 16, 32, 64 px
    assert kernels == {"ConvTranspose_0": (4, 4, 8 * depth, 4 * depth), "ConvTranspose_1": (4, 4, 4 * depth, 2 * depth),
                       "ConvTranspose_2": (4, 4, 2 * depth, depth), "ConvTranspose_3": (4, 4, depth, 3)}
    out = dec.apply(params, feat)
    assert out.shape == (2, 3, 64, 64, 3)
    target = jnp.full(out.shape, 0.25)
    grads = jax.grad(lambda p: jnp.mean((dec.apply(p, feat) - target) ** 2))(params)
    norms = {"/".join(str(getattr(k, "key", k)) for k in path): float(jnp.linalg.norm(g))
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(n > 0 for n in norms.values()), norms
    with_shuffle = nets.ImageDecoder(depth).init(jax.random.PRNGKey(0), feat)["params"]
    assert not any(k.startswith("ConvTranspose") for k in with_shuffle)


# ---------------------------------------------------------------------------------------------- optimiser

@pytest.mark.parametrize("ssm_clip", ["group", "per_leaf"])
def test_ssm_clip_groups(ssm_clip):
    """A huge gradient on C only, seen on the second Adam step (the first is g/|g| whatever the scale):
    clipped per leaf name, B's step is the one it gets without it; clipped as one group, C's norm shrinks B's
    gradient and so changes its step."""
    cfg = dataclasses.replace(preset("tiny"), ssm_clip=ssm_clip)
    learner = make_learner(cfg, {"vector": (3,)}, 3)
    params = learner.init(jax.random.PRNGKey(0)).params
    opt = make_optimizer(cfg)
    cell = ("wm", "params", "seq", "layers", "cell")

    def grads(c_value: float):
        g = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
        node = g
        for k in cell:
            node = node[k]
        node["C"] = jnp.full_like(node["C"], c_value)
        return g

    def b_after_two_steps(c_value: float):
        state = opt.init(params)
        _, state = opt.update(grads(1e-3), state, params)  # equal moments for every leaf
        u, _ = opt.update(grads(c_value), state, params)
        for k in cell:
            u = u[k]
        return np.asarray(u["B"])

    same = np.allclose(b_after_two_steps(1e-3), b_after_two_steps(1e6), rtol=1e-5)
    assert same == (ssm_clip == "per_leaf")
    state = opt.init(params)
    groups = set(state.inner_states)
    want = {f"ssm/{n}" for n in SSM_LEAVES} if ssm_clip == "per_leaf" else {"ssm"}
    assert groups == {"model", "actor", "critic"} | want


# --------------------------------------------------------------------------------------------------- acting

def test_uniform_prefill_actions_ignore_the_actor_and_keep_the_carry_consistent():
    cfg = preset("tiny")
    learner = make_learner(cfg, {"vector": (3,)}, 3)
    params = learner.init(jax.random.PRNGKey(0)).params
    head = params["actor"]["params"]["MLP_0"]["Dense_0"]
    head["bias"] = head["bias"].at[0].add(8.0)  # an actor that nearly always picks action 0
    w = 3000
    carry = learner.init_policy_carry(w)
    obs = {"vector": np.ones((w, 3), np.float32)}
    first, key = np.ones(w, bool), jax.random.PRNGKey(5)
    step = jax.jit(learner.policy_step, static_argnames="uniform")
    c_actor, a_actor = step(params, carry, obs, first, key)
    c_unif, a_unif = step(params, carry, obs, first, key, uniform=True)
    assert np.mean(np.asarray(a_actor) == 0) > 0.95
    freq = np.bincount(np.asarray(a_unif), minlength=3) / w
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.03)
    # same posterior and SSM state; the carried action is the one the env got
    np.testing.assert_array_equal(np.asarray(c_unif.hidden_re), np.asarray(c_actor.hidden_re))
    np.testing.assert_array_equal(np.asarray(c_unif.stoch), np.asarray(c_actor.stoch))
    np.testing.assert_array_equal(np.asarray(c_unif.action), np.eye(3)[np.asarray(a_unif)])
    # a pure function of the key: the loop's committed key stream makes it resumable
    np.testing.assert_array_equal(np.asarray(step(params, carry, obs, first, key, uniform=True)[1]), a_unif)


def test_uniform_prefill_in_the_loop_resumes_bit_identically(tmp_path: Path):
    from agent.train import train
    from tests.agent.test_train import assert_same, final_state, make_cfg, make_ctx

    cfg = make_cfg("tmaze")  # prefill 32 env steps = 16 loop iterations of 2 envs
    cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, prefill_actions="uniform"))
    assert train(cfg, make_ctx(tmp_path / "straight")) == "done"
    reference = final_state(tmp_path / "straight", cfg)
    root = tmp_path / "interrupted"
    assert train(cfg, make_ctx(root, stop_after=9)) == "stopped"  # mid-prefill
    assert train(cfg, make_ctx(root, token="t1")) == "done"
    assert_same(final_state(root, cfg), reference)
    # the switch is live: the same run acting with the actor takes other actions during the prefill
    actor = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, prefill_actions="actor"))
    assert train(actor, make_ctx(tmp_path / "actor")) == "done"
    first = [d["action"][:16] for d in final_state(tmp_path / "actor", actor)["data"]]
    assert any(not np.array_equal(a, d["action"][:16]) for a, d in zip(first, reference["data"], strict=True))


# ------------------------------------------------------------------------------------------------- envs

def test_time_limit_is_stored_as_truncation_or_terminal_on_a_real_episode():
    """POPGym ConcentrationEasy ends on its step limit with truncated=True (never terminated)."""
    rows = {}
    for mode in ("truncation", "terminal"):
        cfg = EnvConfig(kind="popgym", id="popgym-ConcentrationEasy-v0", time_limit=mode)
        with VecEnv(cfg, 1, seed=0, processes=False) as vec:
            vec.reset()
            actions = np.random.default_rng(0).integers(vec.num_actions, size=(400, 1))
            steps = [vec.step(a)[0] for a in actions]
        last = [i for i, b in enumerate(steps) if b["is_last"][0]]
        assert last, "the episode should hit its time limit within 400 steps"
        rows[mode] = (last, [bool(steps[i]["is_terminal"][0]) for i in last],
                      sum(bool(b["is_terminal"][0]) for b in steps))
    assert rows["truncation"][0] == rows["terminal"][0]  # same episodes
    assert rows["truncation"][1:] == ([False] * len(rows["truncation"][0]), 0)
    assert rows["terminal"][1:] == ([True] * len(rows["terminal"][0]), len(rows["terminal"][0]))


@pytest.mark.slow
def test_memory_maze_time_limit_is_terminal_in_the_preset():
    cfg = env_preset("mmaze9x9")
    actions = np.ones((1001, 1), np.int64)
    with VecEnv(cfg, 1, seed=3, processes=False) as vec:
        vec.reset()
        steps = [vec.step(a)[0] for a in actions]
    lasts = [i for i, b in enumerate(steps) if b["is_last"][0]]
    assert lasts == [999] and steps[999]["is_terminal"][0] and steps[1000]["is_first"][0]
    assert not any(b["is_terminal"][0] for b in steps[:999])


def test_nn_default_kernel_init_is_what_fan_in_names():
    """`winit=fan_in` must be flax's own default, so the earlier presets keep their bits."""
    x = jnp.ones((1, 40))
    a = nn.Dense(30).init(jax.random.PRNGKey(0), x)
    b = nn.Dense(30, kernel_init=nets.kernel_init("fan_in")).init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(np.asarray(a["params"]["kernel"]), np.asarray(b["params"]["kernel"]))
