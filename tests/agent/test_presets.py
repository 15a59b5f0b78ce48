"""Every preset validates and yields consistent shapes (abstract evaluation only: no big convs run on CPU)."""

from dataclasses import FrozenInstanceError
from pathlib import Path

import jax
import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from agent.config import AgentConfig, ConfigError, SSMConfig, agent_config_from
from agent.learner import make_learner

PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "agent"
OBS = {
    "tiny": {"vector": (5,), "image": (64, 64, 3)},
    "tmaze": {"vector": (3,)},
    "tmaze_small": {"vector": (4,)},
    "popgym": {"vector": (4,)},
    "mmaze": {"image": (64, 64, 3)},
}
ACTIONS = {"tiny": 3, "tmaze": 4, "tmaze_small": 4, "popgym": 4, "mmaze": 6}


def load(name: str) -> AgentConfig:
    return agent_config_from(OmegaConf.load(PRESETS / f"{name}.yaml"))


def test_preset_files_match_the_schema():
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == sorted(OBS)
    mm, pop = load("mmaze"), load("popgym")
    assert (mm.deter, mm.ssm.units, mm.ssm.hidden, mm.ssm.layers, mm.cnn_depth) == (2048, 1024, 512, 5, 48)
    assert (mm.dyn_scale, mm.rep_scale, mm.model_opt.wd, mm.ssm_opt.wd) == (0.8, 0.2, 0.01, 0.0)
    # corrected popgym sizes (PR #4): the SSM width is not halved to 512
    assert (pop.deter, pop.ssm.units, pop.ssm.hidden, pop.ssm.layers) == (512, 1024, 512, 5)
    assert not pop.ac_deter


def test_schema_rejects_bad_values():
    with pytest.raises(ConfigKeyError):
        agent_config_from({"no_such_key": 1})
    with pytest.raises(ValidationError):
        agent_config_from({"deter": "lots"})
    with pytest.raises(ConfigError, match="blocks"):
        AgentConfig(ssm=SSMConfig(hidden=12, blocks=8))
    with pytest.raises(FrozenInstanceError):
        load("tiny").deter = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(OBS))
def test_preset_shapes(name):
    cfg = load(name)
    learner = make_learner(cfg, OBS[name], ACTIONS[name])
    state = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    wm = state.params["wm"]["params"]
    ssm = wm["seq"]["layers"]
    layers, p, h = cfg.ssm.layers, cfg.ssm.hidden, cfg.ssm.units
    assert ssm["cell"]["B"].shape == (layers, p, h, 2)
    assert ssm["cell"]["Lambda_re"].shape == (layers, p)
    assert ssm["initial_hidden"].shape == (layers, p, 2)
    feat = (cfg.deter if cfg.ac_deter else 0) + cfg.stoch_size + 2 * layers * p
    assert state.params["actor"]["params"]["MLP_0"]["DenseNorm_0"]["Dense_0"]["kernel"].shape[0] == feat
    if name == "mmaze":
        assert feat == 8192  # 2048 + 1024 + 5120, as in the reference
        assert wm["image_enc"]["Conv_3"]["kernel"].shape == (4, 4, 4 * 48, 8 * 48)
    new_state, metrics = jax.eval_shape(learner.train_step, state, learner.batch_spec(2, 4), jax.random.PRNGKey(1))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert all(m.shape == () for m in metrics.values())
    expected = {"wm/dyn_loss", "wm/rep_loss", "wm/reward_loss", "wm/cont_loss", "actor/loss", "critic/loss"}
    expected |= {f"wm/{k}_loss" for k in OBS[name]}
    assert expected <= set(metrics)
    w = 3
    carry = learner.init_policy_carry(w)
    obs = {k: jax.ShapeDtypeStruct((w, *s), "uint8" if k == "image" else "float32") for k, s in OBS[name].items()}
    first = jax.ShapeDtypeStruct((w,), "bool")
    new_carry, action = jax.eval_shape(learner.policy_step, state.params, carry, obs, first, jax.random.PRNGKey(2))
    assert action.shape == (w,) and new_carry.hidden_re.shape == (w, layers, p)
