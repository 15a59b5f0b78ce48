"""POPGym envs through gymnasium: one-hot/flattened f32 observations, one flat Discrete action space.

Snapshots are by value and exact without pickle: the episode seed plus the actions taken so far; restore
re-resets with that seed (gymnasium re-seeds the env's `np_random`, so the episode depends on the seed alone)
and replays the actions. POPGym episodes are short (tens to a few hundred steps at ~100k steps/s).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from agent.envs.base import (
    EnvConfigError,
    EnvError,
    FieldSpec,
    Obs,
    Schema,
    SnapshotError,
    check_action,
    pack,
    unpack,
)
from agent.envs.config import EnvConfig


def _space_encoder(space):
    """-> (dim, encode(value) -> f32 (dim,)) for a gymnasium observation space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)

        def enc(v):
            out = np.zeros(n, np.float32)
            out[int(v) - start] = 1.0
            return out

        return n, enc
    if isinstance(space, spaces.MultiDiscrete):
        nvec = np.asarray(space.nvec).reshape(-1)
        start = np.asarray(space.start).reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        dim = int(nvec.sum())

        def enc(v):
            out = np.zeros(dim, np.float32)
            out[offsets + np.asarray(v).reshape(-1) - start] = 1.0
            return out

        return dim, enc
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        dim = int(np.prod(space.shape))
        return dim, lambda v: np.asarray(v, np.float32).reshape(dim)
    if isinstance(space, (spaces.Tuple, spaces.Dict)):
        keys = list(space.spaces.keys()) if isinstance(space, spaces.Dict) else list(range(len(space.spaces)))
        parts = [_space_encoder(space.spaces[k]) for k in keys]
        dim = sum(d for d, _ in parts)

        def enc(v):
            return np.concatenate([e(v[k]) for k, (_, e) in zip(keys, parts, strict=True)]).astype(np.float32)

        return dim, enc
    raise EnvConfigError(f"POPGym observation space {space} is not supported")


def _action_decoder(space, env_id: str):
    """-> (num_actions, decode(int) -> the env's action)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        start = int(space.start)
        return int(space.n), lambda a: a + start
    if isinstance(space, spaces.MultiDiscrete):
        nvec = tuple(int(n) for n in np.asarray(space.nvec).reshape(-1))
        start = np.asarray(space.start).reshape(-1)
        shape = np.asarray(space.nvec).shape
        return math.prod(nvec), lambda a: (np.array(np.unravel_index(a, nvec)) + start).reshape(shape)
    raise EnvConfigError(f"{env_id} has action space {space}; only Discrete and MultiDiscrete are supported")


def popgym_ids() -> list[str]:
    """All POPGym ids registered in gymnasium."""
    import gymnasium
    import popgym  # noqa: F401  (registers the ids)

    return sorted(k for k in gymnasium.registry if k.startswith("popgym-"))


class PopgymEnv:
    """One POPGym env behind the adapter interface."""

    def __init__(self, cfg: EnvConfig):
        assert cfg.kind == "popgym", cfg
        import gymnasium

        known = popgym_ids()
        if cfg.id not in known:
            raise EnvConfigError(f"env.id={cfg.id!r} is not a registered POPGym id; known: {known}")
        self.id, self.cfg = cfg.id, cfg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = gymnasium.make(cfg.id, disable_env_checker=True)
        self._dim, self._encode = _space_encoder(self._env.observation_space)
        self.num_actions, self._decode = _action_decoder(self._env.action_space, cfg.id)
        self._seed: int | None = None
        self._actions: list[int] = []
        self._done = False

    def obs_spec(self) -> Schema:
        return {"vector": FieldSpec((self._dim,), "float32")}

    def reset(self, episode_seed: int) -> Obs:
        obs, _ = self._env.reset(seed=int(episode_seed))
        self._seed, self._actions, self._done = int(episode_seed), [], False
        return {"vector": self._encode(obs)}

    def step(self, action: int) -> tuple[Obs, float, bool, bool]:
        if self._seed is None or self._done:
            raise EnvError(f"{self.id}: step called before reset or after the episode ended")
        a = check_action(action, self.num_actions)
        obs, reward, terminated, truncated, _ = self._env.step(self._decode(a))
        self._actions.append(a)
        self._done = bool(terminated or truncated)
        return {"vector": self._encode(obs)}, float(reward) * self.cfg.reward_scale, bool(terminated), bool(truncated)

    @property
    def success(self) -> bool | None:
        return None

    def snapshot(self) -> bytes:
        if self._seed is None:
            raise EnvError(f"{self.id}: snapshot called before reset")
        return pack({"kind": "popgym", "id": self.id, "seed": self._seed},
                    {"actions": np.asarray(self._actions, np.int64)})

    def restore(self, blob: bytes) -> Obs:
        header, arrays = unpack(blob, "popgym")
        if header["id"] != self.id:
            raise SnapshotError(f"snapshot of {header['id']} restored into {self.id}")
        obs = self.reset(header["seed"])
        for a in arrays["actions"].tolist():
            if self._done:
                n = len(arrays["actions"])
                raise SnapshotError(f"{self.id}: replayed episode ended before its {n} actions")
            obs = self.step(a)[0]
        return obs

    def close(self) -> None:
        self._env.close()
