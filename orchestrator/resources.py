"""What a run needs in host memory, estimated at submit from its config, and whether the profile can hold it.

A run is one learner process (params, Adam moments and slow critic: their sizes come from `jax.eval_shape` on the
learner's init, so no model runs), the replay's in-memory parts (decoded-chunk cache, open tails, prefetched
batches) and, with `train.env_processes`, one worker process per env. The estimate is compared with
`cluster.mem_gb` on Slurm (or, unset, the largest node of the partition that `sinfo` reports) and, locally, with
MemAvailable shared by the runs started at once. `--force` (`FORCE=1`) submits anyway.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator import slurm
from orchestrator.config import OrchestratorError, RootConfig

# Peak RSS (VmHWM) of one spawned `agent.envs.VecEnv` worker, MB, read from /proc/<pid>/status after a reset and
# 300-500 random steps of 2 workers (`python -m orchestrator.resources KIND`). Measured on the project's 2-core
# x86_64 dev machine (Debian, Python 3.11, MuJoCo 3.17 rendering with EGL): tmaze passive L20 44.5; popgym
# RepeatPreviousEasy 47.0, ConcentrationHard 48.6; mmaze 9x9 1518 at its peak, 1351 once settled.
WORKER_RSS_MB = {"tmaze": 45, "popgym": 49, "mmaze": 1520}
# A worker's interpreter alone (a T-Maze env is a few numbers): what an env in the learner's process does not add.
INTERPRETER_MB = WORKER_RSS_MB["tmaze"]
# The learner process besides its state: Python, jax/XLA runtime, compiled programs and their buffers. Measured on
# the same machine: the `tiny` agent's process peaks at 1.35 GB (VmHWM) after compiling and running one train step
# on CPU (batch 2 x 32). Larger models add activations: on CPU to this, on a GPU to device memory.
LEARNER_OVERHEAD_MB = 1400
# Live train state + its host copy serialised at every commit (on a GPU the live one is device memory, but the
# commit's device_get tree and its bytes are both on the host).
STATE_COPIES = 2
STEP_FIXED_BYTES = 4 + 4 + 3  # action i32, reward f32, is_first/is_last/is_terminal (agent/train.py step_schema)
MB = 2**20


class ResourceError(OrchestratorError):
    """The profile (or this machine) cannot hold what the run needs; nothing was submitted."""


@dataclass(frozen=True)
class Estimate:
    """Host memory of one run, MB, by part."""

    envs_mb: float  # env worker processes (or, in-process, what the envs add to the learner's)
    replay_mb: float  # cache_mb + open tails (twice: a background commit copies them) + prefetched batches
    state_mb: float  # STATE_COPIES x (params + Adam moments + slow critic) + lagged policy params
    overhead_mb: float
    num_envs: int
    env_kind: str
    env_processes: bool
    params: int  # parameter count of the learner

    @property
    def total_mb(self) -> float:
        return self.envs_mb + self.replay_mb + self.state_mb + self.overhead_mb

    def parts(self) -> str:
        if self.env_processes:
            envs = (f"{self.num_envs} {self.env_kind} env processes x {_gb(WORKER_RSS_MB[self.env_kind])} = "
                    f"{_gb(self.envs_mb)}")
        else:
            envs = f"{self.num_envs} in-process {self.env_kind} envs {_gb(self.envs_mb)}"
        return (f"{envs}, replay {_gb(self.replay_mb)}, learner state {_gb(self.state_mb)} "
                f"({self.params / 1e6:.1f}M params), learner overhead {_gb(self.overhead_mb)}")


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 102.4 else f"{mb:.0f} MB"


def _tree_bytes(tree) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def learner_bytes(cfg: RootConfig, obs_spec: dict, num_actions: int) -> tuple[int, int, int]:
    """(train state bytes, policy params bytes, parameter count) from the learner's init, traced not run."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from agent.learner import make_learner

    learner = make_learner(cfg.agent, obs_spec, num_actions)
    # an abstract key: nothing is placed on a device, so no XLA backend (and its threads) starts in the submitting
    # process, which then forks submitit's local controller
    state = jax.eval_shape(learner.init, jax.ShapeDtypeStruct((2,), jnp.uint32))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return _tree_bytes(state), _tree_bytes(learner.policy_params(state.params)), params


def estimate(cfg: RootConfig) -> Estimate:
    """What one run of `cfg` needs in host memory."""
    from agent.envs import env_spec

    t, r = cfg.train, cfg.replay
    obs_spec, num_actions = env_spec(cfg.env)
    step = STEP_FIXED_BYTES + sum(int(_prod(s.shape)) * _itemsize(s.dtype) for s in obs_spec.values())
    per_env = WORKER_RSS_MB[cfg.env.kind] - (0 if t.env_processes else INTERPRETER_MB)
    replay = r.cache_mb + (2 * t.num_envs * r.chunk + (r.prefetch + 1) * t.batch * t.length) * step / MB
    state, policy, params = learner_bytes(cfg, obs_spec, num_actions)
    return Estimate(envs_mb=t.num_envs * max(per_env, 1), replay_mb=replay,
                    state_mb=(STATE_COPIES * state + t.policy_lag * policy) / MB, overhead_mb=LEARNER_OVERHEAD_MB,
                    num_envs=t.num_envs, env_kind=cfg.env.kind, env_processes=t.env_processes, params=params)


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def mem_available_mb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """This machine's MemAvailable, MB (None where /proc/meminfo has none)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def node_memory_mb(partition: str, runner: slurm.Runner = slurm.run_command) -> float | None:
    """The largest RealMemory (MB) of the partition's nodes per `sinfo`; None when sinfo cannot say."""
    argv = ["sinfo", "-h", "-o", "%m"] + (["-p", partition] if partition else [])
    try:
        values = [v.rstrip("+") for v in runner(argv).split()]
    except slurm.SlurmError:
        return None
    sizes = [float(v) for v in values if v.replace(".", "", 1).isdigit()]
    return max(sizes) if sizes and max(sizes) > 1 else None  # RealMemory unset in slurm.conf reads 1


def check(cfg: RootConfig, profile: str, runs_at_once: int = 1, force: bool = False,
          runner: slurm.Runner = slurm.run_command, meminfo: Path = Path("/proc/meminfo"),
          out=None) -> Estimate:
    """Warn (one line) when train.num_envs env processes exceed cluster.cpus; raise ResourceError (one line, the
    numbers) when the profile cannot hold the run's estimate, unless `force` (then the refusal is a warning)."""
    c, t = cfg.cluster, cfg.train
    out = out or sys.stderr
    est = estimate(cfg)
    if t.env_processes and t.num_envs > c.cpus:  # in-process envs step one after another: no contention
        print(f"warning: train.num_envs={t.num_envs} exceeds cluster.cpus={c.cpus} of profile {profile}: the env "
              f"steps share {c.cpus} core(s); raise cluster.cpus or lower train.num_envs", file=out)
    need = est.total_mb * runs_at_once
    if c.kind == "slurm" and c.mem_gb:
        limit, what = c.mem_gb * 1024, f"cluster.mem_gb={c.mem_gb:g} of profile {profile}"
    elif c.kind == "slurm":
        limit = node_memory_mb(c.partition, runner)
        what = (f"profile {profile} sets no cluster.mem_gb, and the largest node of partition "
                f"{c.partition or '(default)'} has {_gb(limit or 0)} (sinfo)")
        if limit is None:
            print(f"warning: a run needs ~{_gb(est.total_mb)} ({est.parts()}); profile {profile} sets no "
                  "cluster.mem_gb and sinfo reports no node memory, so this is unchecked: set cluster.mem_gb",
                  file=out)
            return est
    else:
        limit = mem_available_mb(meminfo)
        if limit is None:
            return est
        what = f"this machine has {_gb(limit)} available (MemAvailable)"
    if need <= limit:
        return est
    total = (f"{runs_at_once} runs at once x ~{_gb(est.total_mb)} = {_gb(need)}" if runs_at_once > 1
             else f"~{_gb(need)}")
    fix = "lower train.num_envs or raise cluster.mem_gb" if c.kind == "slurm" else \
        "lower train.num_envs or start fewer runs at once"
    msg = (f"{cfg.run.exp or 'the run'} needs {total} ({est.parts()}), but {what}; {fix}, or submit anyway with "
           "FORCE=1 (--force)")
    if force:
        print(f"warning (FORCE): {msg}", file=out)
        return est
    raise ResourceError(msg)


def measure_worker_rss(kind_cfg, num_envs: int = 2, steps: int = 300) -> list[dict[str, float]]:
    """VmRSS and VmHWM (MB) of each worker of a real VecEnv after a reset and `steps` random steps."""
    import numpy as np

    from agent.envs import VecEnv

    vec = VecEnv(kind_cfg, num_envs, seed=0, processes=True)
    try:
        vec.reset()
        rng = np.random.default_rng(0)
        for _ in range(steps):
            vec.step(rng.integers(0, vec.num_actions, num_envs))
        return [proc_memory_mb(pid) for pid in vec.worker_pids()]
    finally:
        vec.close()


def proc_memory_mb(pid: int) -> dict[str, float]:
    """{VmRSS, VmHWM} of a process, MB, from /proc/<pid>/status."""
    rows = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in rows if ln.startswith(("VmRSS:", "VmHWM:"))}


if __name__ == "__main__":  # python -m orchestrator.resources tmaze|popgym|mmaze: the figures of WORKER_RSS_MB
    from agent.envs import EnvConfig

    kinds = {"tmaze": EnvConfig(kind="tmaze", id="passive"),
             "popgym": EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0"),
             "mmaze": EnvConfig(kind="mmaze", id="9x9")}
    for name in sys.argv[1:] or ["tmaze", "popgym"]:
        print(name, measure_worker_rss(kinds[name]))
