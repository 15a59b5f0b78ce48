"""What runs inside the job (Slurm step or local process): `run_job(run_dir)`.

The launch pickle holds only the run folder's path; everything else comes from `config.yaml` and the durable
store, so a node-failure requeue that reruns the original pickle resumes correctly. Signal handlers only set a
flag; the training entry stops at its next step boundary, commits, and returns "stopped"; the job then says by
its exit status whether the host side should requeue it (`scontrol` is not inside containers). So does a
CorruptChunkError (a durable chunk failed its checksum and the buffer quarantined it): the next attempt's restore
falls back to the newest commit without that chunk. A NoRestorableCommitError (no commit without it) fails the
job at once: another attempt would restore the same store.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.device import DeviceFingerprint, device_fingerprint
from agent.run_config import RunContext
from buffer import CorruptChunkError, NoRestorableCommitError, WriterFencedError
from orchestrator import slurm
from orchestrator.config import RootConfig, agent_run_config, load_run_config
from orchestrator.run_state import Attempt, CorruptChunk, RunState, StopFacts, read_run_state, write_run_state
from orchestrator.sweep import RunPaths, run_paths

LOCAL_REQUEUE_EXIT = 144  # submitit's local controller restarts a task that exits with this


class StopFlag:
    """A stop request: set by a signal handler (which does nothing else), by the file the host-side step wrapper
    writes when Slurm signals the step, or by the attempt's end time coming near.

    Under the wrapper (`R2I_FACTS_FILE` set) the job keeps USR2/TERM *ignored* and watches the file instead:
    Slurm signals every process of the step, and env worker processes started by the training loop inherit
    the ignored disposition, so they are not killed before the loop has committed (measured: with handlers
    only in the main process, a preemption killed the workers and the job failed with a broken pipe).
    """

    POLL_S = 0.2  # at most one stat() of the request file per POLL_S (shared filesystems)

    def __init__(self, request_file: str | None = None, end_time: float | None = None,
                 grace_s: float = 0.0) -> None:
        self.signal: str | None = None
        self.time: float | None = None
        self.request_file = request_file
        self.end_time = end_time
        self.grace_s = grace_s
        self._next_poll = 0.0

    def handler(self, signum: int, frame: Any = None) -> None:
        if self.signal is None:
            self.signal, self.time = signal.Signals(signum).name, time.time()

    def _poll_file(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self.POLL_S
        try:
            first = Path(self.request_file).read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return
        fields = dict(kv.split("=", 1) for kv in first.split() if "=" in kv)
        self.signal = fields.get("Signal", "SIGUSR2")
        self.time = float(fields.get("SignalTime") or time.time())

    def __call__(self) -> bool:
        if self.signal is None and self.request_file:
            self._poll_file()
        if self.signal is not None:
            return True
        # a lost signal: stop by the clock of Slurm's end time instead
        return self.end_time is not None and time.time() >= self.end_time - self.grace_s

    def install(self) -> None:
        handler = signal.SIG_IGN if self.request_file else self.handler
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, handler)


DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def pin_xla_flags(flags: str) -> str:
    """`flags` plus the flags exact resume needs on a GPU, unless the user set those flags otherwise."""
    names = {f.split("=", 1)[0] for f in flags.split()}
    extra = [f for f in DETERMINISTIC_XLA_FLAGS if f.split("=", 1)[0] not in names]
    return " ".join([*flags.split(), *extra])


def resolve_entry(spec: str) -> Callable[..., str]:
    """`package.module:function` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"run.entry={spec!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def _cluster_kind() -> str:
    return "slurm" if os.environ.get("SLURM_JOB_ID") else "local"


def _log(msg: str) -> None:
    print(f"[r2i {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_job(run_dir: str) -> str:
    """Run (or resume) one run to "done" or to a stop; exits with REQUEUE_EXIT when it wants a requeue."""
    flag = StopFlag(request_file=os.environ.get("R2I_FACTS_FILE") or None)
    flag.install()  # first: a stop request must never be lost, nor kill the process
    if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()):
        # started by the local launcher, which blocks SIGINT so that no job acts on the terminal's Ctrl-C:
        # ignore it first (a pending one is dropped), then unblock, so that env workers inherit SIG_IGN
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    cfg = load_run_config(Path(run_dir) / "config.yaml")
    sweep, run = Path(run_dir).parent.name, Path(run_dir).name
    paths = run_paths(cfg, Path(run_dir).parent, run).resolved()
    kind = _cluster_kind()
    facts = slurm.facts_from(os.environ) if kind == "slurm" else None
    if facts is not None:
        flag.end_time, flag.grace_s = facts.end_time, cfg.cluster.signal_grace_s
    prior = read_run_state(paths.state)
    if prior is not None and prior.state == "done":
        _log(f"run {run} is already done; nothing to do")
        return "done"

    here = device_fingerprint()  # before the entry imports jax: the host's facts
    device = here.to_json()
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", str(os.getpid()))
    restart = facts.restart_count if facts else 0
    previous = [a.device for a in (prior.attempts if prior else ()) if a.device]
    warning = None
    if previous and DeviceFingerprint.from_json(previous[-1]).differences(here):
        warning = (f"attempt {len(prior.attempts)} runs on different hardware "
                   f"({previous[-1]} -> {device}): "
                   "it continues exactly from the committed state, but later bits will differ")
        _log("WARNING: " + warning)
    attempt = Attempt(job_id=job_id, restart=restart, cluster=kind, host=socket.gethostname(), pid=os.getpid(),
                      device=device, start=time.time())
    state = RunState.begin(prior, attempt, time.time(), warning)
    write_run_state(paths.state, state)
    paths.logs.mkdir(parents=True, exist_ok=True)
    Path(paths.scratch).mkdir(parents=True, exist_ok=True)
    _log(f"run {sweep}/{run} job {job_id} restart {restart} on {attempt.host}: {cfg.run.entry}")

    # Before the entry imports jax: a requeued attempt (and every other seed of the sweep) loads its XLA programs
    # from this cache instead of recompiling them, so it reaches its first step, and can answer a signal, sooner.
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(run_dir).parent / ".jax-cache"))
    # The cached programs also pin XLA's GPU autotuning choices across attempts; this pins the kernels that would
    # otherwise reduce in a run-dependent order (scatter-add, some convolution algorithms). No effect on CPU.
    os.environ["XLA_FLAGS"] = pin_xla_flags(os.environ.get("XLA_FLAGS", ""))
    ctx = RunContext(scratch_dir=paths.scratch, durable_url=paths.durable, log_dir=str(paths.logs),
                     writer_token=f"{job_id}.{restart}.{uuid.uuid4().hex[:8]}", should_stop=flag)
    try:
        result = resolve_entry(cfg.run.entry)(agent_run_config(cfg), ctx)
    except BaseException as e:
        corrupt = corrupt_chunk_cause(e)
        if corrupt is not None:  # exits when a requeue is left
            requeues = facts.restart_count if facts else len(state.attempts) - 1
            state = _requeue_for_fallback(cfg, paths, state, kind, requeues, corrupt)
        state = replace(state, state="failed", error=f"{type(e).__name__}: {e}", updated=time.time())
        state = state.with_last(end=time.time(), outcome="failed", traceback=traceback.format_exc()[-2000:])
        write_run_state(paths.state, state)
        raise
    assert result in ("done", "stopped"), f"{cfg.run.entry} returned {result!r}, expected 'done' or 'stopped'"
    state = state.with_last(end=time.time(), outcome=result, signal=flag.signal)
    if result == "done":
        write_run_state(paths.state, replace(state, state="done", updated=time.time()))
        _log(f"run {run} done")
        return "done"
    return _after_stop(cfg, paths, state, flag, kind)


def corrupt_chunk_cause(e: BaseException | None) -> CorruptChunkError | None:
    """The CorruptChunkError that ended the entry, also under errors its cleanup raised on top; None without one,
    when the writer was fenced (another copy of the job owns the run, and a requeue would fence it), or when no
    commit is left to fall back to (a requeue would restore the same store and fail the same way)."""
    found, seen = None, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (WriterFencedError, NoRestorableCommitError)):
            return None
        if isinstance(e, CorruptChunkError) and found is None:
            found = e
        e = e.__cause__ or e.__context__
    return found


def _requeue_for_fallback(cfg: RootConfig, paths: RunPaths, state: RunState, kind: str, requeues: int,
                          err: CorruptChunkError) -> RunState:
    """A durable chunk (or pack) failed its checksum: the buffer has quarantined it, so the next attempt's restore
    falls back to the newest commit without it. Exit with the requeue status unless cluster.max_requeues is
    used up (then return the state with the chunk recorded: the job fails with the error)."""
    state = state.with_last(stop="corrupt_chunk", corrupt=CorruptChunk(key=err.key, manifest=err.manifest))
    if requeues >= cfg.cluster.max_requeues:
        _log(f"{err}; {requeues} requeues = cluster.max_requeues, not requeueing")
        return state
    state = state.with_last(end=time.time(), outcome="corrupt_chunk", traceback=traceback.format_exc()[-2000:])
    write_run_state(paths.state, replace(state, state="requeued", updated=time.time()))
    code = slurm.REQUEUE_EXIT if kind == "slurm" else LOCAL_REQUEUE_EXIT
    _log(f"{err}; asking for a requeue (exit {code}): the next attempt restores an older commit")
    sys.exit(code)


def _after_stop(cfg: RootConfig, paths: RunPaths, state: RunState, flag: StopFlag, kind: str) -> str:
    """Record why the attempt stopped; exit with a requeue status when it should run again."""
    signal_time = flag.time or time.time()
    if kind == "local":
        why = "timeout" if flag.signal == "SIGUSR2" else "user_stop"
        state = state.with_last(stop=why)
        write_run_state(paths.state, replace(state, state="requeued" if why == "timeout" else "stopped",
                                             updated=time.time()))
        _log(f"stopped ({why}, {flag.signal}); committed")
        if why == "timeout":
            sys.exit(LOCAL_REQUEUE_EXIT)
        return "stopped"
    facts = slurm.gather_facts(os.environ, os.environ.get("R2I_FACTS_FILE"))
    why = slurm.classify_stop(flag.signal, signal_time, facts, cfg.cluster.signal_grace_s)
    state = state.with_last(stop=why, facts=StopFacts(state=facts.state, preempt_time=facts.preempt_time,
                                                      end_time=facts.end_time, signal_time=signal_time))
    if why == "cancelled":
        write_run_state(paths.state, replace(state, state="cancelled", updated=time.time()))
        _log("cancelled; committed, not requeueing")
        return "stopped"
    if facts.restart_count >= cfg.cluster.max_requeues:
        write_run_state(paths.state, replace(state, state="requeue_limit", updated=time.time()))
        _log(f"stopped ({why}) after {facts.restart_count} requeues = cluster.max_requeues; not requeueing")
        return "stopped"
    write_run_state(paths.state, replace(state, state="requeued", updated=time.time()))
    _log(f"stopped ({why}, {flag.signal}); committed; asking the host to requeue (exit {slurm.REQUEUE_EXIT})")
    sys.exit(slurm.REQUEUE_EXIT)
