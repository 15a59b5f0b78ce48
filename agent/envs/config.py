"""EnvConfig: the `env` node of the config tree (hydra group `experiments/env/*.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.envs.base import EnvConfigError

KINDS = ("tmaze", "popgym", "mmaze")
TMAZE_IDS = ("passive", "active")
MMAZE_IDS = ("9x9", "11x11", "13x13", "15x15")
RENDER_BACKENDS = ("", "egl", "osmesa", "glfw")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to build and how.

    kind: tmaze | popgym | mmaze.
    id:   tmaze: passive | active; popgym: a gymnasium id `popgym-<Name>-v0`;
          mmaze: 9x9 | 11x11 | 13x13 | 15x15.
    `time_limit` applies to every kind; the remaining fields apply to one kind only and are ignored by the others.
    """

    kind: str = "tmaze"
    id: str = "passive"
    # what the replay stores when an episode hits its time limit (Memory Maze's, POPGym Concentration's):
    # "truncation" keeps is_terminal False, so the critic bootstraps across it; "terminal" stores it as a
    # terminal (cont = 0), as the reference does (its gym adapter sets is_terminal = done). T-Maze never truncates.
    time_limit: str = "truncation"
    # T-Maze (Ni et al. 2023): corridor length L = steps between the cue and the junction.
    memory_length: int = 20
    episode_length: int = 0  # 0: the shortest episode that can succeed (L + 1 passive, L + 3 active)
    goal_reward: float = 1.0  # entering the arm the cue pointed to
    wrong_reward: float = 0.0  # entering the other arm (0 as in Ni et al.)
    step_penalty: float | None = None  # per penalised step; None: -1 / (episode_length - 1)
    # which corridor steps cost `step_penalty`: "behind" = behind the fastest schedule, x < t - o (Ni et al.);
    # "stall" = every step that does not move right, so each step's signal is local (learnable from a random
    # policy: after one detour "behind" penalises every later step whatever the agent does)
    penalty_rule: str = "behind"
    # POPGym: rewards are +-1/episode length per step (an episode sums to [-1, 1]); `reward_scale` multiplies them
    reward_scale: float = 1.0
    # Memory Maze
    render_backend: str = ""  # "": respect MUJOCO_GL, else egl when libEGL exists, else osmesa
    fast_contacts: bool = True  # vectorised TargetSphere contact loop (bit-identical, ~2.5x faster)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EnvConfigError(f"env.kind={self.kind!r} is unknown; expected one of {list(KINDS)}")
        if self.time_limit not in ("truncation", "terminal"):
            raise EnvConfigError(f"env.time_limit={self.time_limit!r} must be 'truncation' or 'terminal'")
        if self.kind == "tmaze":
            if self.id not in TMAZE_IDS:
                raise EnvConfigError(
                    f"env.id={self.id!r} is not a T-Maze variant; expected one of {list(TMAZE_IDS)}")
            if self.memory_length < 1:
                raise EnvConfigError(f"env.memory_length={self.memory_length} must be >= 1")
            shortest = self.memory_length + (3 if self.id == "active" else 1)
            if self.episode_length and self.episode_length < shortest:
                raise EnvConfigError(
                    f"env.episode_length={self.episode_length} is shorter than the {shortest} steps "
                    f"a T-Maze {self.id} with memory_length={self.memory_length} needs")
            if self.penalty_rule not in ("behind", "stall"):
                raise EnvConfigError(f"env.penalty_rule={self.penalty_rule!r} must be 'behind' or 'stall'")
            if self.step_penalty is not None and self.step_penalty > 0:
                raise EnvConfigError(f"env.step_penalty={self.step_penalty} must be <= 0")
        elif self.kind == "popgym":
            if not self.reward_scale > 0:
                raise EnvConfigError(f"env.reward_scale={self.reward_scale} must be > 0")
            if not (self.id.startswith("popgym-") and self.id.endswith("-v0")):
                raise EnvConfigError(f"env.id={self.id!r} is not a POPGym id of the form popgym-<Name>-v0")
        elif self.kind == "mmaze":
            if self.id not in MMAZE_IDS:
                raise EnvConfigError(
                    f"env.id={self.id!r} is not a Memory Maze size; expected one of {list(MMAZE_IDS)}")
            if self.render_backend not in RENDER_BACKENDS:
                raise EnvConfigError(
                    f"env.render_backend={self.render_backend!r} is unknown; "
                    f"expected one of {list(RENDER_BACKENDS)}")

    @property
    def name(self) -> str:
        """Short display name, e.g. `tmaze_passive_L20`, `popgym_RepeatPreviousEasy`, `mmaze_9x9`."""
        if self.kind == "tmaze":
            return f"tmaze_{self.id}_L{self.memory_length}"
        if self.kind == "popgym":
            return "popgym_" + self.id[len("popgym-"):-len("-v0")]
        return f"mmaze_{self.id}"
