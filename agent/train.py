"""The training loop: act in lockstep envs, add to the replay, train at a fixed ratio, commit everything together.

Training is a pure function of (config, seed, hardware kind): the train ratio is counted in env steps, every
random draw comes from a jax key or a replay sample index that is part of the commit, and envs are consumed in
worker order. Only the commit *timing* reads the clock, and a commit does not change the trajectory. So a run
restored from any commit continues, bit for bit, as if it had never stopped.

One env step, in program order: act (with the params of update max(0, due - train.policy_lag)), add the step to
the replay, send the actions to the env workers, sample and dispatch the updates this step owes, then collect the
workers' results. The updates need only what the replay already holds, so the device trains while the workers
step, and the host samples meanwhile; nothing waits but the policy, for the params it acts with. With a lag of 0
that is the serial loop's order of draws exactly (the same bits). Train metrics stay on the device until they are
ready, and are summed on the host in update order when a log row or a commit needs them.

One commit = replay chunks + blobs {agent state, policy carry, env snapshots} + `extra` {loop counters, RNG key,
log accumulators, progress}: agent state and buffer contents can never disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from agent.device import DeviceFingerprint, device_fingerprint
from agent.envs import VecEnv
from agent.envs.config import EnvConfig
from agent.evaluate import Evaluator
from agent.events import Committed, LoopEvent, Resumed, Stopped
from agent.learner import Learner, PolicyCarry, data_mesh, jit_train_step, make_learner
from agent.metrics import Mean, MetricsLog
from agent.records import LOOP_FORMAT, CommitExtra, LoopState, Progress, RecordError
from agent.run_config import AgentRunConfig, RunContext, derived_seed
from buffer import FieldSpec, Replay

log = logging.getLogger(__name__)
Outcome = Literal["done", "stopped"]
__all__ = ["Outcome", "ResumeError", "RunContext", "train", "updates_due", "step_schema"]


class ResumeError(RuntimeError):
    """A durable commit that this config cannot continue from (different run, format or shapes)."""


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
    if c.train.policy_lag:  # only when set, so the digests of runs from before the knob stay as they were
        fixed += (("policy_lag", c.train.policy_lag),)
    text = repr(fixed) if legacy else json.dumps([_non_default(x) for x in fixed], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def updates_due(env_steps: int, cfg: AgentRunConfig) -> int:
    """Updates owed after `env_steps`: train_ratio replayed steps per env step once past prefill (integer math)."""
    t = cfg.train
    return max(0, env_steps - t.prefill) * t.train_ratio // (t.batch * t.length)


def train(cfg: AgentRunConfig, ctx: RunContext, *, learner: Learner | None = None,
          make_env: Callable[[EnvConfig], Any] | None = None) -> Outcome:
    """Run (or resume) training until `cfg.train.steps` env steps, or until `ctx.should_stop()`.

    `learner`, `make_env`: parts to use instead of those the config names (a benchmark's stand-ins of fixed
    duration, which time the loop's schedule alone)."""
    return _Loop(cfg, ctx, learner, make_env).run()


def _policy_device(name: str):
    """None: act on the learner's device. "cpu": the host, beside an accelerator; on a CPU-only host the last of
    several CPU devices (`jax_num_cpu_devices`), whose queue runs apart from the learner's first one; else None."""
    if name != "cpu":
        return None
    cpus = jax.devices("cpu")
    if jax.default_backend() != "cpu":
        return cpus[0]
    return cpus[-1] if len(cpus) > 1 else None


_device_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class _PolicyParams:
    """The params the policy acts with, on the policy device: those after update max(0, updates - lag).

    With a lag, the policy's part of every update's params is copied as the update is dispatched (the train state's
    buffers are donated to the next update); the copies a later step may still act with are part of the commit."""

    def __init__(self, select: Callable[[dict], dict], lag: int, device):
        self.select, self.lag, self.device = select, lag, device
        self.kept: dict[int, dict] = {}  # update -> policy params, for updates >= newest - lag
        self._moved: tuple[int, dict] | None = None  # lag 0 on another device: the newest params, moved once

    def _copy(self, params: dict) -> dict:
        """A copy that does not wait for `params` to be computed (jax.Array.copy would)."""
        if self.device is None:
            return _device_copy(params)
        return jax.device_put(params, self.device)

    def published(self, update: int, params: dict) -> None:
        """`params` are those after `update` updates (just dispatched)."""
        if self.lag:
            self.kept[update] = self._copy(self.select(params))
            for old in [u for u in self.kept if u < update - self.lag]:
                del self.kept[old]

    def acting(self, updates: int, params: dict) -> dict:
        """The params to act with when `updates` are done and `params` are the newest."""
        if self.lag:
            return self.kept[max(0, updates - self.lag)]
        if self.device is None:
            return self.select(params)
        if self._moved is None or self._moved[0] != updates:
            self._moved = (updates, jax.device_put(self.select(params), self.device))
        return self._moved[1]

    def to_bytes(self, updates: int) -> bytes | None:
        """The kept params older than the newest (the train state holds those), or None without a lag."""
        if not self.lag:
            return None
        return flax.serialization.to_bytes({str(u): jax.device_get(p) for u, p in self.kept.items() if u < updates})

    def restore(self, updates: int, params: dict, blob: bytes | None) -> None:
        self.kept.clear()
        if not self.lag:
            return
        if blob is None:
            raise ResumeError(f"the commit has no lagged policy params (train.policy_lag={self.lag})")
        template = {str(u): self.select(params) for u in range(max(0, updates - self.lag), updates)}
        for u, p in flax.serialization.from_bytes(template, blob).items():
            self.kept[int(u)] = self._copy(jax.tree.map(jnp.asarray, p))
        self.published(updates, params)


class _Loop:
    """The shell around the pure learner: envs, replay, counters, logging, commits."""

    def __init__(self, cfg: AgentRunConfig, ctx: RunContext, learner: Learner | None = None,
                 make_env: Callable[[EnvConfig], Any] | None = None):
        self.cfg, self.ctx, t = cfg, ctx, cfg.train
        self.t0 = time.monotonic()
        self.env = VecEnv(cfg.env, t.num_envs, seed=cfg.seed, processes=t.env_processes, make=make_env)
        try:
            self.obs_keys = sorted(self.env.obs_spec())
            self.learner = learner or make_learner(cfg.agent, self.env.obs_spec(), self.env.num_actions)
            self.replay = Replay(step_schema(self.env.obs_spec()), t.num_envs, ctx.scratch_dir, ctx.durable_url,
                                 cfg.replay, batch=t.batch, length=t.length, seed=derived_seed(cfg.seed, "replay"),
                                 force_first=True, writer_token=ctx.writer_token)
        except BaseException:
            self.env.close()
            raise
        self.policy_device = _policy_device(t.policy_device)
        learners = [d for d in jax.devices() if d != self.policy_device]
        mesh = data_mesh(learners) if len(learners) > 1 and t.batch % len(learners) == 0 else None
        self.learner_placement = NamedSharding(mesh, PartitionSpec()) if mesh is not None else learners[0]
        # donated: an update writes the new state over the old one's buffers (nothing else holds them)
        self.train_step = jit_train_step(self.learner, mesh, donate=True)
        self.policy_step = jax.jit(self.learner.policy_step, static_argnames="uniform")
        self.policy = _PolicyParams(self.learner.policy_params, t.policy_lag, self.policy_device)
        self.pending: deque[dict] = deque()  # metrics of dispatched updates, not yet summed
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
        self.carry = self._to_policy(self.learner.init_policy_carry(self.cfg.train.num_envs))
        self.policy.published(0, self.state.params)
        self.key = self._to_policy(key)
        self.obs = self.env.reset()
        self.env_steps = self.updates = self.episodes = 0
        self.train_mean, self.episode_mean = Mean(), Mean()
        self.last_return: float | None = None
        self.wall_before = 0.0
        self.metrics.open(committed_bytes=0)

    def _resume(self, extra_json: dict, blobs: dict[str, bytes]) -> None:
        try:
            extra = CommitExtra.from_json(extra_json)
        except RecordError as e:
            raise ResumeError(f"durable commit at {self.ctx.durable_url}: {e}") from e
        loop = extra.loop
        if loop is None:
            raise ResumeError(f"durable commit at {self.ctx.durable_url} has no loop state of format {LOOP_FORMAT}")
        digest = config_digest(self.cfg)
        if loop.config_digest not in (digest, config_digest(self.cfg, legacy=True)):
            raise ResumeError(f"durable store {self.ctx.durable_url} belongs to a run with another config "
                              f"(digest {loop.config_digest} != {digest})")
        here = device_fingerprint()
        try:
            moved = DeviceFingerprint.from_json(extra.device).differences(here)
        except ValueError:  # no fingerprint, or one not ours: nothing says the hardware is the same
            moved = ["device"]
        if moved:
            warnings.warn(f"resuming on different hardware ({extra.device} -> {here.to_text()}): the "
                          "committed state is exact, but later results will not be bit-identical to an "
                          "uninterrupted run", stacklevel=2)
        template = jax.eval_shape(self.learner.init, jax.random.PRNGKey(0))
        self.state = jax.tree.map(jnp.asarray, self.learner.state_from_bytes(template, blobs["agent_state"]))
        self.carry = flax.serialization.from_bytes(
            self.learner.init_policy_carry(self.cfg.train.num_envs), blobs["policy_carry"])
        self.carry = PolicyCarry(*(self._to_policy(x) for x in self.carry))
        self.key = self._to_policy(np.array(loop.key, np.uint32))
        self.obs = self.env.restore({k[4:]: v for k, v in blobs.items() if k.startswith("env/")})
        self.env_steps, self.updates, self.episodes = loop.env_steps, loop.updates, loop.episodes
        self.policy.restore(self.updates, self.state.params, blobs.get("policy_params"))
        self.train_mean, self.episode_mean = Mean.from_json(loop.train_mean), Mean.from_json(loop.episode_mean)
        self.last_return = loop.last_return
        self.wall_before = loop.wall_time_s
        self.metrics.open(committed_bytes=loop.metrics_bytes)
        log.info("resumed at env step %d, update %d (commit %s)", self.env_steps, self.updates,
                 self.replay.info["commit"])
        self._emit(Resumed(self.env_steps, self.updates, int(self.replay.info["commit"])))

    def _commit(self, background: bool) -> int:
        self._drain_metrics(wait=True)
        started = time.monotonic()
        wall = self.wall_before + time.monotonic() - self.t0
        rate = (self.env_steps - self.attempt_start_steps) / max(time.monotonic() - self.t0, 1e-9)
        loop = LoopState(
            format=LOOP_FORMAT, config_digest=config_digest(self.cfg), env_steps=self.env_steps,
            updates=self.updates, episodes=self.episodes, key=tuple(np.asarray(jax.device_get(self.key)).tolist()),
            train_mean=self.train_mean.to_json(), episode_mean=self.episode_mean.to_json(),
            last_return=self.last_return, wall_time_s=wall, metrics_bytes=self.metrics.bytes_written)
        progress = Progress(env_steps=self.env_steps, target_steps=self.cfg.train.steps, updates=self.updates,
                            episodes=self.episodes, last_return=self.last_return, wall_time_s=wall, steps_per_s=rate)
        extra = CommitExtra(progress, self.run_id, loop, device_fingerprint().to_text()).to_json()
        blobs = {"agent_state": self.learner.state_to_bytes(self.state),
                 "policy_carry": flax.serialization.to_bytes(jax.device_get(self.carry))}
        lagged = self.policy.to_bytes(self.updates)
        if lagged is not None:
            blobs["policy_params"] = lagged
        blobs.update({f"env/{k}": v for k, v in self.env.snapshot().items()})
        self.metrics.flush()
        commit = self.replay.commit(extra, blobs, background=background)
        self.last_commit_time = time.monotonic()
        self._emit(Committed(commit, self.env_steps, self.updates, background, self.last_commit_time - started))
        return commit

    def _emit(self, event: LoopEvent) -> None:
        if self.ctx.on_event is not None:
            self.ctx.on_event(event)

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
                self._emit(Stopped(self.env_steps))
                return "stopped"
            self._step()
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

    def _to_policy(self, x):
        """An array or pytree, on the device the policy runs on. The key chain lives there too: a split queued
        behind the learner's updates would make acting wait for them (threefry's bits are the same anywhere)."""
        if self.policy_device is None:
            return jax.tree.map(jnp.asarray, x)
        return jax.device_put(x, self.policy_device)

    def _step(self) -> None:
        """One step of every env, with the updates it owes dispatched while the env workers step."""
        t = self.cfg.train
        self.key, k_act = jax.random.split(self.key)
        params = self.policy.acting(self.updates, self.state.params)
        obs = {k: self._to_policy(self.obs[k]) for k in self.obs_keys}
        uniform = self.cfg.agent.prefill_actions == "uniform" and self.env_steps < t.prefill
        self.carry, action = self.policy_step(params, self.carry, obs, self._to_policy(self.obs["is_first"]), k_act,
                                              uniform=uniform)
        action = np.asarray(jax.device_get(action), np.int32)
        self.replay.add({**self.obs, "action": action})
        self.env.step_async(action)
        self._train(self.env_steps + t.num_envs)
        self.obs, finished = self.env.step_wait()
        self.env_steps += t.num_envs
        for ep in finished:
            self.episodes += 1
            self.last_return = float(ep.ret)
            row = {"episode/return": float(ep.ret), "episode/length": float(ep.length)}
            if ep.success is not None:
                row["episode/success"] = float(ep.success)
            self.episode_mean.add(row)
        self._drain_metrics(wait=False)

    def _train(self, env_steps: int) -> None:
        """Dispatch the updates owed once `env_steps` are taken; they read only what the replay holds now."""
        due = updates_due(env_steps, self.cfg)
        if self.updates >= due or self.replay.info["t"] - self.replay.info["lo"] < self.cfg.train.length:
            return
        while self.updates < due:
            batch = self.replay.sample()
            self.key, k_train = jax.random.split(self.key)
            if self.policy_device is not None:
                k_train = jax.device_put(k_train, self.learner_placement)
            self.state, m = self.train_step(self.state, batch, k_train)
            self.updates += 1
            self.pending.append(m)
            self.policy.published(self.updates, self.state.params)

    def _drain_metrics(self, wait: bool) -> None:
        """Sum the metrics of finished updates on the host, in update order; `wait`: of every dispatched one."""
        while self.pending:
            if not wait and not all(x.is_ready() for x in jax.tree.leaves(self.pending[0])):
                return
            m = jax.device_get(self.pending.popleft())
            self.train_mean.add({k: float(v) for k, v in m.items()})

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
        self._drain_metrics(wait=True)
        row = {"env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes}
        row.update(self.episode_mean.pop())
        row.update({f"train/{k}": v for k, v in self.train_mean.pop().items()})
        elapsed = time.monotonic() - self.t0
        perf = {"perf/env_steps_per_s": (self.env_steps - self.attempt_start_steps) / max(elapsed, 1e-9),
                "perf/wall_time_s": self.wall_before + elapsed}
        self.metrics.write(row, perf)
