"""Environment layer: one small adapter interface over T-Maze, POPGym and Memory Maze, plus VecEnv."""

from agent.envs.base import (
    Env,
    EnvConfigError,
    EnvError,
    EnvWorkerError,
    FieldSpec,
    Obs,
    Schema,
    SnapshotError,
    episode_seed,
)
from agent.envs.config import KINDS, EnvConfig
from agent.envs.vec import EpisodeStats, VecEnv


def make_env(cfg: EnvConfig) -> Env:
    """Build the env `cfg` names. Heavy dependencies (gymnasium, dm_control) are imported only when needed."""
    if cfg.kind == "tmaze":
        from agent.envs.tmaze import TMaze

        return TMaze(cfg)
    if cfg.kind == "popgym":
        from agent.envs.popgym_env import PopgymEnv

        return PopgymEnv(cfg)
    if cfg.kind == "mmaze":
        from agent.envs.mmaze import MemoryMazeEnv

        return MemoryMazeEnv(cfg)
    raise EnvConfigError(f"env.kind={cfg.kind!r} is unknown; expected one of {list(KINDS)}")


def env_spec(cfg: EnvConfig) -> tuple[Schema, int]:
    """(obs spec, num_actions) of the env `cfg` names, without starting a worker: Memory Maze's is known without
    building one; the others are built in this process for a moment (milliseconds)."""
    if cfg.kind == "mmaze":
        from agent.envs.mmaze import MemoryMazeEnv

        return dict(MemoryMazeEnv.OBS_SPEC), MemoryMazeEnv.num_actions
    env = make_env(cfg)
    try:
        return env.obs_spec(), env.num_actions
    finally:
        env.close()


__all__ = [
    "KINDS", "Env", "EnvConfig", "EnvConfigError", "EnvError", "EnvWorkerError", "EpisodeStats", "FieldSpec",
    "Obs", "Schema", "SnapshotError", "VecEnv", "env_spec", "episode_seed", "make_env",
]
