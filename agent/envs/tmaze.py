"""T-Maze passive and active (after Ni et al. 2023, "When do transformers shine in RL?").

Layout, with L = memory_length and o = 1 for the active variant, 0 for the passive one:

                      (o+L, +1)
    O -- S ---------- J
                      (o+L, -1)

O (x=0) is the oracle cell: the first time the agent stands on it, the observation carries the goal cue
(+1 or -1). S (x=o) is the start, J (x=o+L) the junction. Passive: the agent starts on the oracle, so the
cue is in the first observation. Active: it must first step left to see it. Up/down are blocked in the
corridor; at the junction they enter an arm and end the episode.

Actions (4): 0 right, 1 up, 2 left, 3 down.
Observation `vector` f32 (4,): [x / (o+L), y, cue (only on first oracle visit, else 0), at junction].
Reward: `goal_reward` (+1) for the arm the cue pointed to, `wrong_reward` (0) for the other; on every other
step, `step_penalty` (default -1/(T-1)) when the agent is behind the fastest schedule, i.e. x < t - o after
t steps (Ni et al.'s shaping, `penalty_rule=behind`), or, with `penalty_rule=stall`, on every step that does not
increase x. The optimal return is exactly `goal_reward` (passive; active with `stall`: one penalty for the step
left to the oracle). Episodes end with terminated=True on entering an arm or after T = episode_length
steps (default the shortest possible: L+1 passive, L+3 active); truncated is always False.
Success = entered the correct arm. Deterministic: the cue is drawn from the episode seed only.
"""

from __future__ import annotations

import numpy as np

from agent.envs.base import EnvError, FieldSpec, Obs, Schema, SnapshotError, check_action, pack, unpack
from agent.envs.config import EnvConfig

_MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))  # right, up, left, down as (dx, dy)
RIGHT, UP, LEFT, DOWN = range(4)


class TMaze:
    """T-Maze with vector observations; see the module docstring for the exact rules."""

    num_actions = 4

    def __init__(self, cfg: EnvConfig):
        assert cfg.kind == "tmaze", cfg
        self.cfg = cfg
        self.oracle = 1 if cfg.id == "active" else 0
        self.junction = self.oracle + cfg.memory_length
        self.horizon = cfg.episode_length or (cfg.memory_length + 1 + 2 * self.oracle)
        self.penalty = -1.0 / (self.horizon - 1) if cfg.step_penalty is None else float(cfg.step_penalty)
        # JSON-able: x, y, t, goal, cue_seen, cue_visible, done, success, seed
        self._state: dict | None = None

    def obs_spec(self) -> Schema:
        return {"vector": FieldSpec((4,), "float32")}

    def _obs(self) -> Obs:
        s = self._state
        cue = float(s["goal"]) if s["cue_visible"] else 0.0
        vec = np.array([s["x"] / self.junction, s["y"], cue, float(s["x"] == self.junction)], np.float32)
        return {"vector": vec}

    def reset(self, episode_seed: int) -> Obs:
        goal = 1 if np.random.default_rng(episode_seed).integers(2) else -1
        at_oracle = self.oracle == 0
        self._state = dict(x=self.oracle, y=0, t=0, goal=goal, cue_seen=at_oracle, cue_visible=at_oracle,
                           done=False, success=False, seed=int(episode_seed))
        return self._obs()

    def step(self, action: int) -> tuple[Obs, float, bool, bool]:
        s = self._state
        if s is None or s["done"]:
            raise EnvError("TMaze.step called before reset or after the episode ended")
        dx, dy = _MOVES[check_action(action, self.num_actions)]
        x_before = s["x"]
        x, y = s["x"] + dx, s["y"] + dy
        in_corridor = dy == 0 and 0 <= x <= self.junction
        into_arm = dx == 0 and s["x"] == self.junction
        if in_corridor or into_arm:
            s["x"], s["y"] = x, y
        s["t"] += 1
        s["cue_visible"] = s["x"] == 0 and not s["cue_seen"]
        s["cue_seen"] = s["cue_seen"] or s["x"] == 0
        if s["y"] != 0:
            s["success"] = s["y"] == s["goal"]
            reward = self.cfg.goal_reward if s["success"] else self.cfg.wrong_reward
            s["done"] = True
        else:
            behind = s["x"] <= x_before if self.cfg.penalty_rule == "stall" else s["x"] < s["t"] - self.oracle
            reward = self.penalty if behind else 0.0
            s["done"] = s["t"] >= self.horizon
        return self._obs(), float(reward), s["done"], False

    @property
    def success(self) -> bool | None:
        return None if self._state is None else bool(self._state["success"])

    def _config_key(self) -> list:
        return [self.cfg.id, self.cfg.memory_length, self.horizon, self.cfg.penalty_rule]

    def snapshot(self) -> bytes:
        if self._state is None:
            raise EnvError("TMaze.snapshot called before reset")
        return pack({"kind": "tmaze", "config": self._config_key(), "state": self._state})

    def restore(self, blob: bytes) -> Obs:
        header, _ = unpack(blob, "tmaze")
        if header["config"] != self._config_key():
            raise SnapshotError(
                f"T-Maze snapshot of config {header['config']} restored into {self._config_key()}")
        self._state = dict(header["state"])
        return self._obs()

    def close(self) -> None:
        self._state = None
