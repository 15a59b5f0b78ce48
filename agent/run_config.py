"""Configuration of the training loop: the `train`, `wandb` and `eval` sections, `AgentRunConfig` (the part of the
config tree that `agent.train.train` receives) and `RunContext` (see docs/interfaces.md). Free of jax, so the
orchestrator can build both before the entry point imports it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.config import AgentConfig, ConfigError
from agent.envs.config import EnvConfig
from agent.events import LoopEvent
from buffer import ReplayConfig


def derived_seed(seed: int, purpose: str) -> int:
    """A seed of its own for each use of the run's seed (the replay's sampler, evaluation envs, ...): a draw for one
    purpose never shifts another's."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{purpose}".encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class TrainConfig:
    """Counters of the loop. Everything that shapes the trajectory is counted in env steps, never in seconds."""

    steps: int = 100_000  # env steps to run, all envs together
    num_envs: int = 4
    env_processes: bool = True  # one worker process per env (False: in this process; cheap envs and tests)
    train_ratio: int = 64  # replayed steps (batch * length) per env step
    batch: int = 4  # B sequences per update
    length: int = 1024  # T steps per sequence
    prefill: int = 10_000  # env steps before the first update
    commit_every_min: float = 10.0  # durable commit period; a stop request always commits
    log_every: int = 1000  # env steps between rows of logs/metrics.jsonl
    # The policy acts with the params of update max(0, due - policy_lag), `due` being the updates owed before the
    # step: 0 acts with the newest params (each step then waits for the updates owed by the one before it), 1 or
    # more lets those updates run while the envs take the next steps. Part of the trajectory.
    policy_lag: int = 0
    # Where acting runs: "default" (the learner's device) or "cpu". On one GPU the device runs its queue in order,
    # so a policy step waits behind queued train steps; on the host it does not (with a lag >= 1).
    policy_device: str = "default"

    def __post_init__(self) -> None:
        if min(self.steps, self.num_envs, self.train_ratio, self.batch, self.length, self.log_every) < 1:
            raise ConfigError(f"train: steps, num_envs, train_ratio, batch, length, log_every must be >= 1: {self}")
        if self.prefill < 0 or self.commit_every_min <= 0:
            raise ConfigError(f"train: prefill={self.prefill} must be >= 0 and commit_every_min > 0")
        if self.policy_lag < 0:
            raise ConfigError(f"train.policy_lag={self.policy_lag} must be >= 0 (updates)")
        if self.policy_device not in ("default", "cpu"):
            raise ConfigError(f"train.policy_device={self.policy_device!r} must be 'default' or 'cpu'")


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases: offline by default (sync later with `wandb sync <run dir>`); one run id per run."""

    mode: str = "offline"  # offline | online | disabled
    project: str = "r2i-hpc"
    entity: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"wandb.mode={self.mode!r} must be offline, online or disabled")


EVAL_POLICIES = ("mode", "sample")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation in envs of its own, from the current params at fixed env steps; never part of the trajectory
    (not in the config digest: changing it still resumes the same run). Media land under `<run>/media/`."""

    every: int = 10_000  # env steps between evaluations (at each multiple crossed); 0: off
    episodes: int = 8  # episodes per evaluation; `eval/*` rows are their means
    envs: int = 0  # eval envs stepped in lockstep in the trainer's process (memory!); 0: one per episode
    policy: str = "mode"  # mode: argmax of the actor | sample: a draw from it (never `agent.act_explore`)
    max_steps: int = 0  # cap per eval episode, counted as an unsuccessful end; 0: the env's own time limit
    video: bool = True  # image envs: video of the first eval episode
    dream: bool = True  # image envs: world-model open-loop video (real | reconstruction | imagined)
    plot: bool = True  # vector envs: PNG of the first eval episode (observations, actions, rewards)
    media_every: int = 0  # env steps between evaluations that make media (a multiple crossed); 0: every one
    dream_context: int = 5  # steps the posterior sees before the world model imagines on
    dream_steps: int = 45  # imagined steps after the context (fewer when the episode is shorter)
    fps: int = 10

    def __post_init__(self) -> None:
        if min(self.every, self.envs, self.max_steps, self.media_every) < 0:
            raise ConfigError(f"eval: every, envs, max_steps, media_every must be >= 0: {self}")
        if min(self.episodes, self.dream_context, self.dream_steps, self.fps) < 1:
            raise ConfigError(f"eval: episodes, dream_context, dream_steps, fps must be >= 1: {self}")
        if self.policy not in EVAL_POLICIES:
            raise ConfigError(f"eval.policy={self.policy!r} must be one of {list(EVAL_POLICIES)}")


@dataclass(frozen=True)
class AgentRunConfig:
    """What the training loop sees of the config tree."""

    seed: int = 0
    agent: AgentConfig = field(default_factory=AgentConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: ReplayConfig = field(default_factory=lambda: ReplayConfig(capacity=1_000_000))
    wandb: WandbConfig = field(default_factory=WandbConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class RunContext:
    """Where a run lives and how it is asked to stop; built by the orchestrator (or a test)."""

    scratch_dir: str  # node-local folder for the replay's working copy (may be empty on a new node)
    durable_url: str  # fsspec URL of the durable store: the only truth for resuming
    log_dir: str  # metrics.jsonl and wandb files
    writer_token: str  # unique per attempt; a newer attempt fences this one's commits off
    should_stop: Callable[[], bool]  # polled at step boundaries; True -> commit and return "stopped"
    on_event: Callable[[LoopEvent], None] | None = None  # told what the loop did (agent/events.py); None: nobody
