"""The training loop: act in lockstep envs, add to the replay, train at a fixed ratio, commit everything together.

Training is a pure function of (config, seed, hardware kind): the train ratio is counted in env steps, every
random draw comes from a jax key or a replay sample index that is part of the commit, and envs are consumed in
worker order. Only the commit *timing* reads the clock, and a commit does not change the trajectory. So a run
restored from any commit continues, bit for bit, as if it had never stopped.

One commit = replay chunks + blobs {agent state, policy carry, env snapshots} + `extra` {loop counters, RNG key,
log accumulators, progress}: agent state and buffer contents can never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Literal

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from agent.envs import VecEnv
from agent.evaluate import Evaluator
from agent.learner import PolicyCarry, data_mesh, jit_train_step, make_learner
from agent.metrics import Mean, MetricsLog
from agent.run_config import AgentRunConfig, RunContext
from buffer import FieldSpec, Replay

log = logging.getLogger(__name__)
Outcome = Literal["done", "stopped"]
__all__ = ["Outcome", "ResumeError", "RunContext", "train", "updates_due", "step_schema", "device_fingerprint"]
LOOP_FORMAT = 1


class ResumeError(RuntimeError):
    """A durable commit that this config cannot continue from (different run, format or shapes)."""


def device_fingerprint() -> str:
    """What decides the bits of XLA's results: backend, device kinds and count, visible CPU cores."""
    kinds = sorted({d.device_kind for d in jax.devices()})
    return f"{jax.default_backend()}:{','.join(kinds)}:x{jax.device_count()}:cores={len(os.sched_getaffinity(0))}"


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{purpose}".encode()).digest()[:8], "little") >> 1


def step_schema(obs_spec: dict) -> dict[str, FieldSpec]:
    """What one env step stores in the replay (Dreamer layout; see docs/interfaces.md)."""
    schema = {k: FieldSpec(tuple(s.shape), str(np.dtype(s.dtype))) for k, s in obs_spec.items()}
    schema.update(action=FieldSpec((), "int32"), reward=FieldSpec((), "float32"),
                  is_first=FieldSpec((), "bool"), is_last=FieldSpec((), "bool"), is_terminal=FieldSpec((), "bool"))
    return schema


def _non_default(value):
    """A dataclass as {field: value} without the fields left at their defaults (recursively); other values as is."""
    if not dataclasses.is_dataclass(value):
        return value
    out = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if v != default:
            out[f.name] = _non_default(v)
    return out


def config_digest(cfg: AgentRunConfig, legacy: bool = False) -> str:
    """What must match to continue a trajectory; commit cadence and logging do not change it. Only values that
    differ from their defaults count, so a job requeued onto code with a new knob (whose default keeps the old
    behaviour) still resumes. `legacy`: the digest of every field, as commits made before this change have."""
    c = cfg
    fixed = (c.seed, c.agent, c.env, c.train.num_envs, c.train.train_ratio, c.train.batch, c.train.length,
             c.train.prefill, c.replay.capacity, c.replay.chunk, c.replay.inner)
    text = repr(fixed) if legacy else json.dumps([_non_default(x) for x in fixed], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def updates_due(env_steps: int, cfg: AgentRunConfig) -> int:
    """Updates owed after `env_steps`: train_ratio replayed steps per env step once past prefill (integer math)."""
    t = cfg.train
    return max(0, env_steps - t.prefill) * t.train_ratio // (t.batch * t.length)


def train(cfg: AgentRunConfig, ctx: RunContext) -> Outcome:
    """Run (or resume) training until `cfg.train.steps` env steps, or until `ctx.should_stop()`."""
    return _Loop(cfg, ctx).run()


class _Loop:
    """The shell around the pure learner: envs, replay, counters, logging, commits."""

    def __init__(self, cfg: AgentRunConfig, ctx: RunContext):
        self.cfg, self.ctx, t = cfg, ctx, cfg.train
        self.t0 = time.monotonic()
        self.env = VecEnv(cfg.env, t.num_envs, seed=cfg.seed, processes=t.env_processes)
        try:
            self.obs_keys = sorted(self.env.obs_spec())
            self.learner = make_learner(cfg.agent, self.env.obs_spec(), self.env.num_actions)
            self.replay = Replay(step_schema(self.env.obs_spec()), t.num_envs, ctx.scratch_dir, ctx.durable_url,
                                 cfg.replay, batch=t.batch, length=t.length, seed=_derived_seed(cfg.seed, "replay"),
                                 force_first=True, writer_token=ctx.writer_token)
        except BaseException:
            self.env.close()
            raise
        ndev = jax.device_count()
        mesh = data_mesh() if ndev > 1 and t.batch % ndev == 0 else None
        self.train_step = jit_train_step(self.learner, mesh)
        self.policy_step = jax.jit(self.learner.policy_step)
        self.init = jax.jit(self.learner.init)
        self.run_id = "r2i-" + hashlib.sha256(ctx.durable_url.encode()).hexdigest()[:12]
        self.metrics = MetricsLog(Path(ctx.log_dir), cfg.wandb, self.run_id, owner_check=self.replay.check_writer)
        # its own envs, seeds and keys: never part of the trajectory; media under <run>/media (log_dir's parent)
        self.evaluator = Evaluator(cfg, Path(ctx.log_dir).parent, learner=self.learner)

    # --- state --------------------------------------------------------------------------------------------
    def _fresh(self) -> None:
        key = jax.random.PRNGKey(self.cfg.seed)
        key, k_init = jax.random.split(key)
        self.state = self.init(k_init)
        self.carry = self.learner.init_policy_carry(self.cfg.train.num_envs)
        self.key = key
        self.obs = self.env.reset()
        self.env_steps = self.updates = self.episodes = 0
        self.train_mean, self.episode_mean = Mean(), Mean()
        self.last_return: float | None = None
        self.wall_before = 0.0
        self.metrics.open(committed_bytes=0)

    def _resume(self, extra: dict, blobs: dict[str, bytes]) -> None:
        loop = extra.get("loop")
        if not isinstance(loop, dict) or loop.get("format") != LOOP_FORMAT:
            raise ResumeError(f"durable commit at {self.ctx.durable_url} has no loop state of format {LOOP_FORMAT}")
        digest = config_digest(self.cfg)
        if loop["config_digest"] not in (digest, config_digest(self.cfg, legacy=True)):
            raise ResumeError(f"durable store {self.ctx.durable_url} belongs to a run with another config "
                              f"(digest {loop['config_digest']} != {digest})")
        if extra.get("device") != device_fingerprint():
            warnings.warn(f"resuming on different hardware ({extra.get('device')} -> {device_fingerprint()}): the "
                          "committed state is exact, but later results will not be bit-identical to an "
                          "uninterrupted run", stacklevel=2)
        template = jax.eval_shape(self.learner.init, jax.random.PRNGKey(0))
        self.state = jax.tree.map(jnp.asarray, self.learner.state_from_bytes(template, blobs["agent_state"]))
        self.carry = flax.serialization.from_bytes(
            self.learner.init_policy_carry(self.cfg.train.num_envs), blobs["policy_carry"])
        self.carry = PolicyCarry(*(jnp.asarray(x) for x in self.carry))
        self.key = jnp.asarray(np.array(loop["key"], np.uint32))
        self.obs = self.env.restore({k[4:]: v for k, v in blobs.items() if k.startswith("env/")})
        self.env_steps, self.updates, self.episodes = loop["env_steps"], loop["updates"], loop["episodes"]
        self.train_mean, self.episode_mean = Mean.from_json(loop["train_mean"]), Mean.from_json(loop["episode_mean"])
        self.last_return = loop["last_return"]
        self.wall_before = loop["wall_time_s"]
        self.metrics.open(committed_bytes=loop["metrics_bytes"])
        log.info("resumed at env step %d, update %d (commit %s)", self.env_steps, self.updates,
                 self.replay.info["commit"])

    def _commit(self, background: bool) -> int:
        wall = self.wall_before + time.monotonic() - self.t0
        rate = (self.env_steps - self.attempt_start_steps) / max(time.monotonic() - self.t0, 1e-9)
        loop = {
            "format": LOOP_FORMAT, "config_digest": config_digest(self.cfg),
            "env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
            "key": np.asarray(jax.device_get(self.key)).tolist(),
            "train_mean": self.train_mean.to_json(), "episode_mean": self.episode_mean.to_json(),
            "last_return": self.last_return, "wall_time_s": wall, "metrics_bytes": self.metrics.bytes_written,
        }
        progress = {"env_steps": self.env_steps, "target_steps": self.cfg.train.steps, "updates": self.updates,
                    "episodes": self.episodes, "last_return": self.last_return, "wall_time_s": wall,
                    "steps_per_s": rate}
        extra = {"loop": loop, "progress": progress, "wandb_run_id": self.run_id, "device": device_fingerprint()}
        blobs = {"agent_state": self.learner.state_to_bytes(self.state),
                 "policy_carry": flax.serialization.to_bytes(jax.device_get(self.carry))}
        blobs.update({f"env/{k}": v for k, v in self.env.snapshot().items()})
        self.metrics.flush()
        commit = self.replay.commit(extra, blobs, background=background)
        self.last_commit_time = time.monotonic()
        return commit

    # --- loop ---------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            restored = self.replay.restore()
            if restored is None:
                self._fresh()
            else:
                self._resume(restored.extra, restored.blobs)
            self.attempt_start_steps = self.env_steps
            self.last_commit_time = time.monotonic()
            return self._loop()
        finally:
            self.env.close()
            self.evaluator.close()
            self.metrics.close()
            self.replay.close()

    def _loop(self) -> Outcome:
        t = self.cfg.train
        commit_every_s = t.commit_every_min * 60.0
        while self.env_steps < t.steps:
            if self.ctx.should_stop():
                self._commit(background=False)
                log.info("stopped at env step %d with a commit", self.env_steps)
                return "stopped"
            self._act()
            self._train()
            self._maybe_evaluate()
            if self.env_steps // t.log_every > (self.env_steps - t.num_envs) // t.log_every:
                self._log_row()
            # A due periodic commit waits (at most `replay.inner` - 1 steps) for the streams to end on a whole
            # inner chunk: else it writes a partial one that the next commit writes again, ~10 % more bytes
            # when streams add a few hundred steps between commits. Stops and the end commit at once.
            if time.monotonic() - self.last_commit_time >= commit_every_s and self.replay.at_inner_boundary:
                self._commit(background=True)
        self._commit(background=False)
        return "done"

    def _act(self) -> None:
        self.key, k_act = jax.random.split(self.key)
        obs = {k: jnp.asarray(self.obs[k]) for k in self.obs_keys}
        self.carry, action = self.policy_step(self.state.params, self.carry, obs, jnp.asarray(self.obs["is_first"]),
                                              k_act)
        action = np.asarray(jax.device_get(action), np.int32)
        self.replay.add({**self.obs, "action": action})
        self.obs, finished = self.env.step(action)
        self.env_steps += self.cfg.train.num_envs
        for ep in finished:
            self.episodes += 1
            self.last_return = float(ep.ret)
            row = {"episode/return": float(ep.ret), "episode/length": float(ep.length)}
            if ep.success is not None:
                row["episode/success"] = float(ep.success)
            self.episode_mean.add(row)

    def _train(self) -> None:
        due = updates_due(self.env_steps, self.cfg)
        if self.updates >= due or self.replay.info["t"] - self.replay.info["lo"] < self.cfg.train.length:
            return
        while self.updates < due:
            batch = self.replay.sample()
            self.key, k_train = jax.random.split(self.key)
            self.state, m = self.train_step(self.state, batch, k_train)
            self.updates += 1
            self.train_mean.add({k: float(v) for k, v in jax.device_get(m).items()})

    def _maybe_evaluate(self) -> None:
        """At each multiple of eval.every crossed: evaluate the params of this env step (see agent/evaluate.py).
        A resume redoes an evaluation whose row the commit does not cover, with the same result."""
        t0 = time.monotonic()
        result = self.evaluator.maybe_run(self.state.params, self.env_steps, self.cfg.train.num_envs)
        if result is None:
            return
        perf = {"perf/eval_s": time.monotonic() - t0, "perf/wall_time_s": self.wall_before + time.monotonic() - self.t0}
        self.metrics.write(result.row(), perf)
        self.metrics.log_media(self.env_steps, {k: self.evaluator.run_dir / v for k, v in result.media.items()})

    def _log_row(self) -> None:
        row = {"env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes}
        row.update(self.episode_mean.pop())
        row.update({f"train/{k}": v for k, v in self.train_mean.pop().items()})
        elapsed = time.monotonic() - self.t0
        perf = {"perf/env_steps_per_s": (self.env_steps - self.attempt_start_steps) / max(elapsed, 1e-9),
                "perf/wall_time_s": self.wall_before + elapsed}
        self.metrics.write(row, perf)
