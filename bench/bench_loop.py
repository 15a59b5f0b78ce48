"""Loop benchmark: env-only, learner-only and full-loop env steps/s of one config, side by side in one run.

    python -m bench.bench_loop [--quick] [--presets schedule,cpu,gpu] [--out bench/results/loop.json]

efficiency = loop / min(env-only, learner-only): 1.0 when the slower side never waits for the other.
- env-only: the loop's own envs (`VecEnv`, same processes setting) stepped with random actions, nothing else.
- learner-only: train steps on batches sampled from a replay the env-only run filled, as env steps/s at the ratio
  (one update stands for batch * length / train_ratio env steps).
- loop: `agent.train.train` itself; the rate is read from the time of each iteration's stop poll, over the second
  half of the run (after prefill and the compile).

Presets:
- `schedule`: the loop's structure alone. The env is a stand-in that sleeps a fixed time per step in its worker
  process and the update a stand-in of fixed length on the device (on a CPU host, a dependent scalar XLA loop: one
  core, while the sleeping envs use none); its policy step reads the params, as a real one does, so it waits for
  the updates it depends on. It acts on a CPU device of its own (`train.policy_device=cpu`; this preset runs in a
  child process with two CPU devices), as it would on the host beside a GPU: each device runs its queue in order.
  `even`: one update per loop step, as long as an env step (a serial loop: 0.5). `lumpy`: one update every 4
  steps, 4 env steps long, with policy lag 0 (each 4th step waits for it) and 1 (it runs while the envs step).
- `cpu`: passive T-Maze with the tiny agent, env processes on (envs and learner share the machine's cores).
- `gpu`: the mmaze experiment with env=mmaze9x9 (its agent, Memory Maze 9x9), 16 env processes, ratio 64,
  B4 x T1024; needs an accelerator (skipped, and said so, without one).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from agent.config import agent_config_from
from agent.device import device_fingerprint
from agent.envs import EnvConfig, VecEnv, env_spec
from agent.envs.base import FieldSpec
from agent.learner import Learner, PolicyCarry, jit_train_step, make_learner
from agent.run_config import AgentRunConfig, EvalConfig, RunContext, TrainConfig, WandbConfig
from agent.train import step_schema, train
from buffer import Replay, ReplayConfig

REPO = Path(__file__).resolve().parents[1]


# --- stand-ins of fixed duration ----------------------------------------------------------------------------------
class SleepEnv:
    """An env whose step takes `step_s` of wall time and no CPU; episodes of `length` steps."""

    num_actions = 2
    success = None

    def __init__(self, step_s: float, length: int = 50):
        self.step_s, self.length, self.t = step_s, length, 0

    def obs_spec(self):
        return {"vector": FieldSpec((4,), "float32")}

    def _obs(self):
        return {"vector": np.full(4, self.t, np.float32)}

    def reset(self, episode_seed: int):
        self.t = 0
        return self._obs()

    def step(self, action: int):
        time.sleep(self.step_s)
        self.t += 1
        return self._obs(), 0.0, False, self.t >= self.length

    def snapshot(self) -> bytes:
        return json.dumps({"t": self.t}).encode()

    def restore(self, blob: bytes):
        self.t = json.loads(blob)["t"]
        return self._obs()

    def close(self) -> None:
        pass


def make_sleep_env(cfg: EnvConfig, step_s: float) -> SleepEnv:
    return SleepEnv(step_s)


@flax.struct.dataclass
class _StandInState:
    params: dict  # {"wm": (32, 32) f32, "actor": () f32}
    step: jax.Array  # () int32


def _spin(x: jax.Array, n: int) -> jax.Array:
    """n dependent small products: one core busy for a fixed time. XLA's CPU client runs a computation it deems
    cheap (a scalar loop) inline in the dispatching thread; a loop of 32 x 32 products it dispatches as a device
    would, asynchronously."""
    m = jnp.eye(32, dtype=jnp.float32) * 0.5
    return jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(m @ y + 1e-3), x)


def spin_iterations(seconds: float) -> int:
    """Iterations of `_spin` that take `seconds` on this device."""
    n = 4096
    f = jax.jit(functools.partial(_spin, n=n))
    f(jnp.zeros((32, 32))).block_until_ready()
    t = time.perf_counter()
    f(jnp.zeros((32, 32))).block_until_ready()
    return max(1, int(n * seconds / (time.perf_counter() - t)))


def stand_in_learner(update_s: float, num_envs: int) -> Learner:
    n = spin_iterations(update_s)

    def init(key):
        return _StandInState({"wm": jnp.zeros((32, 32)), "actor": jnp.zeros(())}, jnp.zeros((), jnp.int32))

    def train_step(state, batch, key):
        wm = _spin(state.params["wm"] + batch["vector"].mean(), n)
        return _StandInState({"wm": wm, "actor": state.params["actor"]}, state.step + 1), {"loss": wm.mean()}

    def init_policy_carry(w):
        z = jnp.zeros((w, 1, 1))
        return PolicyCarry(z, z, jnp.zeros((w, 1)), jnp.zeros((w, 2)))

    def policy_step(params, carry, obs, is_first, key, uniform=False):
        depends = (params["wm"][0, 0] * 0).astype(jnp.int32)  # acting waits for these params, as a real one does
        return carry, jax.random.randint(key, (num_envs,), 0, 2) + depends

    return Learner(init, train_step, init_policy_carry, policy_step,
                   lambda s: flax.serialization.to_bytes(jax.device_get(s)), flax.serialization.from_bytes,
                   lambda b, t: {}, lambda p: {"wm": p["wm"], "actor": p["actor"]})


# --- the three measurements -----------------------------------------------------------------------------------
def env_only(cfg: AgentRunConfig, make, replay: Replay, steps: int) -> float:
    """Env steps/s of the loop's own envs alone; fills `replay` on the side (outside the timed calls)."""
    t = cfg.train
    rng = np.random.default_rng(0)
    with VecEnv(cfg.env, t.num_envs, seed=cfg.seed, processes=t.env_processes, make=make) as env:
        obs, num_actions, busy = env.reset(), env.num_actions, 0.0
        for i in range(steps // t.num_envs):
            action = rng.integers(0, num_actions, t.num_envs).astype(np.int32)
            replay.add({**obs, "action": action})
            t0 = time.perf_counter()
            obs, _ = env.step(action)
            if i >= 2:  # the first steps start episodes (and, for Memory Maze, the renderer)
                busy += time.perf_counter() - t0
    return (steps // t.num_envs - 2) * t.num_envs / busy


def learner_only(cfg: AgentRunConfig, learner: Learner, replay: Replay, updates: int) -> dict:
    t = cfg.train
    step = jit_train_step(learner, donate=True)
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    state, m = step(state, replay.sample(), key)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(updates):
        state, m = step(state, replay.sample(), jax.random.fold_in(key, i))
    jax.block_until_ready(m)
    dt = time.perf_counter() - t0
    return {"update_s": dt / updates, "first_update_s": compile_s,
            "env_steps_per_s": updates / dt * t.batch * t.length / t.train_ratio}


def loop(cfg: AgentRunConfig, learner: Learner | None, make, root: Path) -> dict:
    """`train` end to end; rate over the second half of its iterations (one stop poll per iteration)."""
    stamps: list[float] = []

    def should_stop() -> bool:
        stamps.append(time.perf_counter())
        return False

    root.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(str(root / "scratch"), str(root / "durable"), str(root / "logs"), "bench", should_stop)
    t0 = time.perf_counter()
    assert train(cfg, ctx, learner=learner, make_env=make) == "done"
    half = len(stamps) // 2
    rate = (len(stamps) - 1 - half) * cfg.train.num_envs / (stamps[-1] - stamps[half])
    return {"env_steps_per_s": rate, "iterations": len(stamps), "total_s": time.perf_counter() - t0}


def measure(name: str, cfg: AgentRunConfig, learner: Learner | None, make, updates: int) -> dict:
    t = cfg.train
    with tempfile.TemporaryDirectory(prefix=f"bench-loop-{name}-") as tmp:
        root = Path(tmp)
        if make is None:  # without building a Memory Maze env (seconds, a GB) just for its spec
            obs_spec, num_actions = env_spec(cfg.env)
        else:
            probe = make(cfg.env)
            obs_spec, num_actions = probe.obs_spec(), probe.num_actions
            probe.close()
        probe_learner = learner or make_learner(cfg.agent, obs_spec, num_actions)
        with Replay(step_schema(obs_spec), t.num_envs, str(root / "r-scratch"), str(root / "r-durable"),
                    replace(cfg.replay, fsync=False), batch=t.batch, length=t.length, seed=0,
                    writer_token="bench") as replay:
            env_rate = env_only(cfg, make, replay, max(t.prefill, t.num_envs * (t.length + 8)))
            learn = learner_only(cfg, probe_learner, replay, updates)
        full = loop(cfg, learner, make, root / "loop")
    slower = min(env_rate, learn["env_steps_per_s"])
    out = {"preset": name, "num_envs": t.num_envs, "train_ratio": t.train_ratio, "batch": t.batch,
           "length": t.length, "policy_lag": t.policy_lag, "env_processes": t.env_processes,
           "env_only_steps_per_s": env_rate, "learner_only_steps_per_s": learn["env_steps_per_s"],
           "update_s": learn["update_s"], "loop_steps_per_s": full["env_steps_per_s"],
           "efficiency": full["env_steps_per_s"] / slower,
           "serial_efficiency_bound": 1 / (1 + slower / max(env_rate, learn["env_steps_per_s"])),
           "loop_total_s": full["total_s"]}
    print(json.dumps(out), flush=True)
    return out


# --- presets ------------------------------------------------------------------------------------------------------
def _cfg(agent: str, env: EnvConfig, **train_kw) -> AgentRunConfig:
    agent_cfg = agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / f"{agent}.yaml"))
    return AgentRunConfig(seed=0, agent=agent_cfg, env=env, train=TrainConfig(**train_kw),
                          replay=ReplayConfig(capacity=200_000, chunk=256, inner=16, fsync=False),
                          wandb=WandbConfig(mode="disabled"), eval=EvalConfig(every=0))


def schedule_presets(quick: bool) -> list[dict]:
    step_s = 0.02
    iters = 150 if quick else 400
    env = EnvConfig(kind="tmaze", id="passive", memory_length=4)  # named only; SleepEnv steps
    make = functools.partial(make_sleep_env, step_s=step_s)
    common = dict(num_envs=4, env_processes=True, batch=2, length=8, prefill=64, commit_every_min=1e3,
                  log_every=10**6, policy_device="cpu")
    out = []
    # even: ratio 4 over 4 envs = one 16-step update per loop step, as long as an env step;
    # lumpy: ratio 1 = one update every 4 loop steps, 4 env steps long
    for case, ratio, update_s, updates in (("even", 4, step_s, 100), ("lumpy", 1, 4 * step_s, 30)):
        for lag in (0, 1):
            cfg = _cfg("tiny", env, steps=64 + 4 * iters, train_ratio=ratio, policy_lag=lag, **common)
            out.append({"case": case, **measure(f"schedule-{case}", cfg, stand_in_learner(update_s, 4), make,
                                                updates)})
    return out


def cpu_preset(quick: bool) -> dict:
    env = EnvConfig(kind="tmaze", id="passive", memory_length=20)
    cfg = _cfg("tiny", env, steps=(4000 if quick else 10000), num_envs=4, env_processes=True, train_ratio=64,
               batch=4, length=64, prefill=1000, commit_every_min=1e3, log_every=10**6)
    return measure("cpu-tmaze-tiny", cfg, None, None, 20 if quick else 50)


def gpu_preset(quick: bool) -> dict:
    if jax.default_backend() == "cpu":
        return {"preset": "gpu-mmaze9x9", "skipped": "no accelerator on this machine (jax backend: cpu)"}
    from orchestrator.compose import compose_runs
    from orchestrator.config import agent_run_config

    spec = compose_runs("mmaze", args=["env=mmaze9x9", "train.num_envs=16", "train.prefill=16384",
                                       "train.steps=40960", "train.commit_every_min=1000", "replay.fsync=false",
                                       "wandb.mode=disabled"])[0]
    return measure("gpu-mmaze9x9", agent_run_config(spec.cfg), None, None, 10 if quick else 30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (a minute or two on 2 cores)")
    ap.add_argument("--presets", default="schedule,cpu,gpu")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "loop.json"))
    ap.add_argument("--cpu-devices", type=int, default=0, help=argparse.SUPPRESS)  # the schedule child's
    args = ap.parse_args()
    presets = args.presets.split(",")
    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        assert len(jax.devices("cpu")) == args.cpu_devices, jax.devices("cpu")
    unknown = set(presets) - {"schedule", "cpu", "gpu"}
    if unknown:
        ap.error(f"unknown preset(s) {sorted(unknown)}; expected schedule, cpu, gpu")
    res: dict = {"quick": args.quick, "device": device_fingerprint().to_text(), "platform": platform.platform(),
                 "jax": jax.__version__, "load_avg_1m_start": os.getloadavg()[0]}
    if "schedule" in presets and args.cpu_devices:
        res["schedule"] = schedule_presets(args.quick)
    elif "schedule" in presets:
        with tempfile.NamedTemporaryFile(suffix=".json") as child_out:
            subprocess.run([sys.executable, "-m", "bench.bench_loop", "--presets", "schedule", "--cpu-devices", "2",
                            "--out", child_out.name] + (["--quick"] if args.quick else []), check=True, cwd=REPO)
            res["schedule"] = json.loads(Path(child_out.name).read_text())["schedule"]
    if "cpu" in presets:
        res["cpu"] = cpu_preset(args.quick)
    if "gpu" in presets:
        res["gpu"] = gpu_preset(args.quick)
    res["load_avg_1m_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
