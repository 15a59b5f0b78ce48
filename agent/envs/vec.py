"""VecEnv: W envs stepped in lockstep (in-process or one worker process each), Dreamer-style auto-reset.

Each env lives in a `_Slot` that owns its episode counter and running stats; worker mode runs the very same
slot code in a child process, so both modes give identical results. Replies are consumed in env order, which
makes the run deterministic. The step after an episode's last step starts the next episode: its observation
is the new first one (is_first=True, reward 0) and the action given for that env is ignored. Episode e of env
i is seeded by `episode_seed(seed, i, e)`, so any episode can be rebuilt in any process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from agent.envs.base import EnvError, EnvWorkerError, Schema, SnapshotError, episode_seed, pack, unpack
from agent.envs.config import EnvConfig

Row = dict[str, Any]  # one env's step: obs keys + reward, is_first, is_last, is_terminal
Batch = dict[str, np.ndarray]  # each value (W, ...)
FLAG_KEYS = ("is_first", "is_last", "is_terminal")


class EpisodeStats(NamedTuple):
    """One finished episode of one env."""

    env_index: int
    episode_index: int
    ret: float  # sum of rewards
    length: int  # env steps (actions taken)
    success: bool | None  # None where the env has no notion of success


class _Slot:
    """One env plus its episode bookkeeping; the unit a worker process hosts."""

    def __init__(self, cfg: EnvConfig, seed: int, index: int, make: Callable[[EnvConfig], Any] | None = None):
        if make is None:
            from agent.envs import make_env as make

        self.env = make(cfg)
        self.seed, self.index = seed, index
        self.truncation_is_terminal = cfg.time_limit == "terminal"
        self.episode = -1
        self.needs_reset = True
        self.ret, self.length = 0.0, 0
        self.last: Row | None = None

    def spec(self) -> tuple[Schema, int]:
        return self.env.obs_spec(), self.env.num_actions

    def _row(self, obs, reward: float, first: bool, last: bool, terminal: bool) -> Row:
        self.last = dict(obs, reward=np.float32(reward), is_first=first, is_last=last, is_terminal=terminal)
        return self.last

    def reset(self) -> Row:
        self.episode += 1
        obs = self.env.reset(episode_seed(self.seed, self.index, self.episode))
        self.needs_reset, self.ret, self.length = False, 0.0, 0
        return self._row(obs, 0.0, True, False, False)

    def step(self, action: int) -> tuple[Row, EpisodeStats | None]:
        if self.needs_reset:
            return self.reset(), None
        obs, reward, terminated, truncated = self.env.step(action)
        self.ret += reward
        self.length += 1
        last = terminated or truncated
        stats = None
        if last:
            self.needs_reset = True
            stats = EpisodeStats(self.index, self.episode, self.ret, self.length, self.env.success)
        return self._row(obs, reward, False, last, terminated or (truncated and self.truncation_is_terminal)), stats

    def restart(self, seed_episode: tuple[int, int]) -> Row:
        self.seed, self.episode = seed_episode[0], seed_episode[1] - 1
        return self.reset()

    def snapshot(self) -> bytes:
        if self.last is None:
            raise EnvError(f"env {self.index}: snapshot before the first reset")
        header = {"kind": "vecslot", "index": self.index, "seed": self.seed, "episode": self.episode,
                  "needs_reset": self.needs_reset, "ret": self.ret, "length": self.length,
                  "reward": float(self.last["reward"]), "flags": [bool(self.last[k]) for k in FLAG_KEYS]}
        return pack(header, {"env": np.frombuffer(self.env.snapshot(), np.uint8)})

    def restore(self, blob: bytes) -> Row:
        header, arrays = unpack(blob, "vecslot")
        if (header["index"], header["seed"]) != (self.index, self.seed):
            raise SnapshotError(f"snapshot of env {header['index']} (seed {header['seed']}) restored into "
                                f"env {self.index} (seed {self.seed})")
        obs = self.env.restore(arrays["env"].tobytes())
        self.episode, self.needs_reset = header["episode"], header["needs_reset"]
        self.ret, self.length = header["ret"], header["length"]
        return self._row(obs, header["reward"], *header["flags"])

    def close(self) -> None:
        self.env.close()


def _worker(conn, cfg: EnvConfig, seed: int, index: int, parent_pid: int, make) -> None:
    # Preemption signals belong to the trainer, which must still be able to snapshot us after receiving one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    slot = None
    try:
        slot = _Slot(cfg, seed, index, make)
        conn.send(("ok", slot.spec()))
        while True:
            if not conn.poll(5.0):
                if os.getppid() != parent_pid:
                    return  # orphaned: the trainer died without closing us
                continue
            cmd, arg = conn.recv()
            if cmd == "close":
                conn.send(("ok", None))
                return
            conn.send(("ok", getattr(slot, cmd)() if arg is None else getattr(slot, cmd)(arg)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if slot is not None:
            slot.close()


def _shutdown(procs: list, conns: list) -> None:
    """Stop the workers; also runs at exit, before multiprocessing joins its (SIGTERM-immune) children."""
    for conn in conns:
        try:
            conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
    for p in procs:
        p.join(timeout=5.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=5.0)
    for conn in conns:
        conn.close()
    procs.clear()
    conns.clear()


class VecEnv:
    """W envs in lockstep. `processes=False` runs them in this process (tests, cheap envs).

    `make`: builds one env from the config instead of `agent.envs.make_env` (a benchmark's stand-in env); with
    processes it must be importable by name (a module-level function)."""

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int, processes: bool = True,
                 start_method: str = "spawn", timeout_s: float = 600.0,
                 make: Callable[[EnvConfig], Any] | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs} must be >= 1")
        self.cfg, self.num_envs, self.seed = cfg, num_envs, seed
        self.processes, self.timeout_s = processes, timeout_s
        self._slots: list[_Slot] = []
        self._procs: list = []
        self._conns: list = []
        self._broken: str | None = None
        self._pending: list[int] | None = None  # actions sent by step_async, not yet collected
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        if processes:
            ctx = mp.get_context(start_method)
            try:
                for i in range(num_envs):
                    parent, child = ctx.Pipe()
                    p = ctx.Process(target=_worker, args=(child, cfg, seed, i, os.getpid(), make), daemon=True,
                                    name=f"env-worker-{i}")
                    p.start()
                    child.close()
                    self._procs.append(p)
                    self._conns.append(parent)
                specs = [self._recv(i) for i in range(num_envs)]
            except BaseException:
                self.close()
                raise
        else:
            self._slots = [_Slot(cfg, seed, i, make) for i in range(num_envs)]
            specs = [s.spec() for s in self._slots]
        assert all(s == specs[0] for s in specs), f"envs disagree on (obs spec, num_actions): {specs}"
        self._schema, self.num_actions = specs[0]

    def obs_spec(self) -> Schema:
        return dict(self._schema)

    def worker_pids(self) -> list[int]:
        """Process ids of the env workers in env order (empty in-process): what a memory measurement reads."""
        return [p.pid for p in self._procs]

    # --- transport ---------------------------------------------------------------------------------------
    def _recv(self, i: int):
        conn, proc = self._conns[i], self._procs[i]
        waited = 0.0
        try:
            while not conn.poll(1.0):
                waited += 1.0
                if not proc.is_alive():
                    raise EnvWorkerError(f"env worker {i} (pid {proc.pid}) died, exit code {proc.exitcode}")
                if waited >= self.timeout_s:
                    raise EnvWorkerError(f"env worker {i} (pid {proc.pid}) silent for {self.timeout_s:.0f} s")
            status, payload = conn.recv()
        except (EOFError, OSError) as e:
            raise EnvWorkerError(f"env worker {i} (pid {proc.pid}) died: {e!r}, exit code {proc.exitcode}") from e
        if status != "ok":
            raise EnvWorkerError(f"env worker {i} (env {self.cfg.name}) failed:\n{payload}")
        return payload

    def _call(self, cmd: str, args: list | None = None) -> list:
        """Run `cmd` on every slot (with args[i]) and return the results in env order."""
        args = args if args is not None else [None] * self.num_envs
        self._send(cmd, args)
        return self._gather(cmd, args)

    def _send(self, cmd: str, args: list) -> None:
        if self._broken:
            raise EnvWorkerError(f"VecEnv is unusable after an earlier failure: {self._broken}")
        if self._pending is not None:
            raise EnvError(f"VecEnv.{cmd} while a step_async is not collected (call step_wait first)")
        if not self.processes:
            return
        for i, (conn, a) in enumerate(zip(self._conns, args, strict=True)):
            try:
                conn.send((cmd, a))
            except (BrokenPipeError, OSError) as e:
                # A pipe breaks when its worker is gone: name that worker and how it ended, as _recv does.
                proc = self._procs[i]
                proc.join(timeout=1.0)
                self._broken = (f"env worker {i} (pid {proc.pid}) died before {cmd} could be sent: {e!r}, "
                                f"exit code {proc.exitcode}")
                raise EnvWorkerError(self._broken) from e

    def _gather(self, cmd: str, args: list) -> list:
        try:
            if not self.processes:
                calls = [getattr(s, cmd) for s in self._slots]
                return [f() if a is None else f(a) for f, a in zip(calls, args, strict=True)]
            return [self._recv(i) for i in range(self.num_envs)]
        except EnvWorkerError as e:
            self._broken = str(e).splitlines()[0]
            raise

    def _stack(self, rows: list[Row]) -> Batch:
        out = {k: np.stack([r[k] for r in rows]) for k in self._schema}
        out["reward"] = np.array([r["reward"] for r in rows], np.float32)
        for k in FLAG_KEYS:
            out[k] = np.array([r[k] for r in rows], bool)
        return out

    # --- public API --------------------------------------------------------------------------------------
    def reset(self) -> Batch:
        """Start the next episode of every env (once, on a fresh VecEnv): each (W, ...), is_first all True."""
        return self._stack(self._call("reset"))

    def restart(self, seed: int, episode: int = 0) -> Batch:
        """Start episode `episode` of a run seeded `seed` in every env, whatever they did before (evaluation
        reuses its envs, which are slow to build, for episodes of many seeds); like `reset` otherwise."""
        if min(seed, episode) < 0:
            raise ValueError(f"restart: seed={seed} and episode={episode} must be >= 0")
        self.seed = seed
        return self._stack(self._call("restart", [(seed, episode)] * self.num_envs))

    def step(self, actions) -> tuple[Batch, list[EpisodeStats]]:
        """actions (W,) ints -> (batch, finished episodes in env order).

        batch: obs keys, reward f32, is_first/is_last/is_terminal bool, each (W, ...)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Start `step(actions)`: worker processes step while the caller does other work (in-process envs step
        in `step_wait`). Nothing else may be called on this VecEnv until `step_wait`."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions has shape {actions.shape}, expected ({self.num_envs},)")
        args = [int(a) for a in actions]
        self._send("step", args)
        self._pending = args

    def step_wait(self) -> tuple[Batch, list[EpisodeStats]]:
        """The result of the last `step_async`, as `step` returns it."""
        if self._pending is None:
            raise EnvError("VecEnv.step_wait without a step_async")
        args, self._pending = self._pending, None
        results = self._gather("step", args)
        return self._stack([r for r, _ in results]), [s for _, s in results if s is not None]

    def snapshot(self) -> dict[str, bytes]:
        """Every env's episode index and in-episode state, keyed `env_000`, ... (no pickle)."""
        return {f"env_{i:03d}": b for i, b in enumerate(self._call("snapshot"))}

    def restore(self, blobs: dict[str, bytes]) -> Batch:
        """Continue from `snapshot()` (taken in any process); -> the batch that was last returned then."""
        want = [f"env_{i:03d}" for i in range(self.num_envs)]
        if sorted(blobs) != want:
            raise SnapshotError(f"VecEnv snapshot has keys {sorted(blobs)}, expected {want}")
        return self._stack(self._call("restore", [blobs[k] for k in want]))

    def close(self) -> None:
        """Stop every worker (politely, then SIGKILL); idempotent."""
        for s in self._slots:
            s.close()
        self._slots = []
        self._finalizer()

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

