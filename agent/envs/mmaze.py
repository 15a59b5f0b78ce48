"""Memory Maze (9x9 .. 15x15) built directly from `memory_maze.tasks`: image obs (64, 64, 3) u8, 6 actions.

Facts this relies on (measured, ../shared/reference/dependencies.md §2-3):
- the maze layout comes from labmaze's C++ RNG, seeded once at construction; we re-seed it (and the composer
  env's RandomState) from the episode seed before every reset, so episode k is the same in any process;
- the env cannot be pickled or deep-copied; its exact state is MuJoCo's integration state (mj_getState), the
  material colours (target visibility), the task's counters/flags and the RandomState, restored after
  rebuilding the same maze with one reset;
- dm_control's TargetSphere contact loop is pure Python and ~60 % of a step; `set_fast_contacts(True)`
  replaces it with a numpy version that gives bit-identical frames (tests/agent/test_envs_mmaze.py).
Rendering: MUJOCO_GL is respected; when unset, egl if libEGL is found, else osmesa; env.render_backend
overrides both.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

import numpy as np

from agent.envs.base import (
    SEED_MASK,
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


def select_render_backend(requested: str = "") -> str:
    """Set MUJOCO_GL before dm_control is imported; -> the backend. Config > env var > autodetect."""
    detected = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    backend = requested or os.environ.get("MUJOCO_GL") or detected
    render = sys.modules.get("dm_control._render")
    if render is not None and render.BACKEND != backend:
        raise EnvError(f"dm_control already rendering with {render.BACKEND!r} in this process; cannot switch "
                       f"to {backend!r} (set MUJOCO_GL before the first Memory Maze env)")
    os.environ["MUJOCO_GL"] = backend
    return backend


def _import_tasks():
    try:
        import gym  # noqa: F401  (memory_maze/__init__ re-raises without it; we never use its registration)
    except ImportError:
        # The gymnasium shim from dependencies.md §2: alias the modules memory_maze's __init__ imports.
        import gymnasium

        sys.modules.update({"gym": gymnasium, "gym.spaces": gymnasium.spaces, "gym.envs": gymnasium.envs,
                            "gym.envs.registration": gymnasium.envs.registration})
    from memory_maze import tasks

    return tasks


def _fast_update_activation(self, physics) -> None:
    """Vectorised `TargetSphere._update_activation`: same result, one numpy pass over the contacts."""
    if self._activated:
        return
    contact = physics.data.contact
    g1, g2 = contact.geom1, contact.geom2
    hit = (g1 == self._geom_id) | (g2 == self._geom_id)
    if self._specific_collision_geom_ids:
        ids = list(self._specific_collision_geom_ids)
        hit &= np.isin(g1, ids) | np.isin(g2, ids)
    if hit.any():
        self._activated = True
        physics.bind(self._material).rgba[-1] = 0


_ORIGINAL_UPDATE = None


def set_fast_contacts(enabled: bool) -> None:
    """Switch the TargetSphere contact loop of this process between the numpy and the original version."""
    global _ORIGINAL_UPDATE
    from dm_control.locomotion.props import target_sphere

    cls = target_sphere.TargetSphere
    if _ORIGINAL_UPDATE is None:
        _ORIGINAL_UPDATE = cls._update_activation
    cls._update_activation = _fast_update_activation if enabled else _ORIGINAL_UPDATE


class MemoryMazeEnv:
    """One Memory Maze env (≈2 s to build, ≈1.3 GB RSS, ≈1.5 s per reset)."""

    num_actions = 6  # noop, forward, left, right, forward+left, forward+right
    OBS_SPEC: Schema = {"image": FieldSpec((64, 64, 3), "uint8")}  # known without building one (MuJoCo)

    def __init__(self, cfg: EnvConfig):
        assert cfg.kind == "mmaze", cfg
        self.cfg = cfg
        self.backend = select_render_backend(cfg.render_backend)
        tasks = _import_tasks()
        set_fast_contacts(cfg.fast_contacts)
        make = {"9x9": tasks.memory_maze_9x9, "11x11": tasks.memory_maze_11x11,
                "13x13": tasks.memory_maze_13x13, "15x15": tasks.memory_maze_15x15}[cfg.id]
        self._env = make(image_only_obs=True, seed=0)  # every episode is re-seeded in reset
        inner = self._env
        while hasattr(inner, "env"):
            inner = inner.env
        self._composer = inner  # dm_control.composer.Environment
        self._task = inner.task
        self._seed: int | None = None
        self._obs: np.ndarray | None = None  # (64, 64, 3) u8, last observation
        self._done = False

    def obs_spec(self) -> Schema:
        return dict(self.OBS_SPEC)

    def _reseed(self, episode_seed: int) -> None:
        from labmaze import defaults
        from labmaze.cc.python import _random_maze

        seeds = np.random.SeedSequence(episode_seed).generate_state(2)
        maze_seed, rng_seed = (int(s) & SEED_MASK for s in seeds)
        m = self._task._maze_arena.maze
        m._native_maze = _random_maze.RandomMaze(
            height=m.height, width=m.width, max_rooms=m.max_rooms, room_min_size=m.room_min_size,
            room_max_size=m.room_max_size, retry_count=defaults.RETRY_COUNT,
            extra_connection_probability=defaults.EXTRA_CONNECTION_PROBABILITY,
            max_variations=m.max_variations,
            has_doors=defaults.HAS_DOORS, simplify=True, spawns_per_room=m._spawns_per_room,
            spawn_token=m._spawn_token, objects_per_room=m._objects_per_room, object_token=m._object_token,
            random_seed=maze_seed)
        self._composer._random_state.seed(rng_seed)

    def reset(self, episode_seed: int) -> Obs:
        self._reseed(int(episode_seed))
        ts = self._env.reset()
        self._seed, self._done = int(episode_seed), False
        self._obs = np.asarray(ts.observation, np.uint8)
        return {"image": self._obs.copy()}

    def step(self, action: int) -> tuple[Obs, float, bool, bool]:
        if self._seed is None or self._done:
            raise EnvError("MemoryMazeEnv.step called before reset or after the episode ended")
        ts = self._env.step(check_action(action, self.num_actions))
        self._obs = np.asarray(ts.observation, np.uint8)
        self._done = ts.last()
        # physics divergence; the time limit is a truncation (env.time_limit decides what the replay stores)
        terminated = self._done and ts.discount == 0
        truncated = self._done and not terminated
        return {"image": self._obs.copy()}, float(ts.reward), bool(terminated), bool(truncated)

    @property
    def success(self) -> bool | None:
        return None

    def _state_spec(self):
        import mujoco

        return mujoco.mjtState.mjSTATE_INTEGRATION

    def snapshot(self) -> bytes:
        import mujoco

        if self._seed is None:
            raise EnvError("MemoryMazeEnv.snapshot called before reset")
        physics = self._composer.physics
        m, d = physics.model.ptr, physics.data.ptr
        state = np.empty(mujoco.mj_stateSize(m, self._state_spec()), np.float64)
        mujoco.mj_getState(m, d, state, self._state_spec())
        name, keys, pos, has_gauss, cached = self._composer._random_state.get_state()
        task = self._task
        header = {
            "kind": "mmaze", "id": self.cfg.id, "seed": self._seed, "done": self._done,
            "rng": [name, int(pos), int(has_gauss), float(cached)],
            "task": [int(task._current_target_ix), bool(task._rewarded_this_step),
                     int(task._targets_obtained),
                     [bool(t._activated) for t in task._targets]],
            "reset_next_step": bool(self._composer._reset_next_step),
        }
        arrays = {"state": state, "mat_rgba": np.array(physics.model.mat_rgba), "rng_keys": np.asarray(keys),
                  "obs": self._obs}
        return pack(header, arrays)

    def restore(self, blob: bytes) -> Obs:
        import mujoco

        header, arrays = unpack(blob, "mmaze")
        if header["id"] != self.cfg.id:
            raise SnapshotError(f"snapshot of Memory Maze {header['id']} restored into {self.cfg.id}")
        self.reset(header["seed"])  # rebuilds this episode's maze and model
        physics = self._composer.physics
        m, d = physics.model.ptr, physics.data.ptr
        if arrays["state"].shape != (mujoco.mj_stateSize(m, self._state_spec()),):
            raise SnapshotError(f"MuJoCo state of shape {arrays['state'].shape} does not fit this model")
        mujoco.mj_setState(m, d, arrays["state"], self._state_spec())
        physics.model.mat_rgba[:] = arrays["mat_rgba"]
        name, pos, has_gauss, cached = header["rng"]
        self._composer._random_state.set_state((name, arrays["rng_keys"], pos, has_gauss, cached))
        target_ix, rewarded, obtained, activated = header["task"]
        task = self._task
        task._current_target_ix, task._rewarded_this_step = target_ix, rewarded
        task._targets_obtained = obtained
        for target, a in zip(task._targets, activated, strict=True):
            target._activated = a
        self._composer._reset_next_step = header["reset_next_step"]
        physics.forward()
        self._done = header["done"]
        self._obs = arrays["obs"].copy()
        return {"image": self._obs.copy()}

    def close(self) -> None:
        self._env.close()
