"""Submit, resume and cancel sweeps through submitit: Slurm (returns at once) or the local executor
(foreground with a live display, or detached).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator import oom, resources, slurm
from orchestrator.compose import compose_runs, split_args
from orchestrator.config import EXPERIMENTS_DIR, ClusterConfig, OrchestratorError, RootConfig
from orchestrator.job import run_job
from orchestrator.run_state import read_run_state
from orchestrator.status import LIVE, pid_alive, sweep_status, table
from orchestrator.status import console as status_console
from orchestrator.sweep import (
    Request,
    Sweep,
    SweepError,
    create_sweep,
    expand,
    find_matching,
    is_local_url,
    local_path,
    open_sweep,
    run_root,
)


class PreflightError(OrchestratorError):
    """Something the profile names does not exist or cannot be reached; nothing was submitted."""


def resolve_cluster(cluster: str) -> str:
    """auto -> slurm when `sbatch` is on PATH, else local."""
    if cluster not in ("auto", "slurm", "local"):
        raise OrchestratorError(f"CLUSTER={cluster!r} must be auto, slurm or local")
    if cluster == "auto":
        return "slurm" if slurm.have_slurm() else "local"
    return cluster


def default_profile(kind: str) -> str:
    return os.environ.get("R2I_PROFILE") or ("dev" if kind == "slurm" else "local")


def check_durable(url: str) -> None:
    """PreflightError unless the durable base can be created/listed."""
    try:
        if is_local_url(url):
            p = Path(local_path(url))
            p.mkdir(parents=True, exist_ok=True)
            if not os.access(p, os.W_OK):
                raise OSError(f"{p} is not writable")
        elif url.startswith("s3://"):
            from buffer import probe_durable

            probe_durable(url)  # the bucket, the credentials and a probe PUT: what the jobs' commits will need
        else:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
            fs.makedirs(path, exist_ok=True)
            fs.ls(path)
    except Exception as e:  # noqa: BLE001 - any failure means unreachable; report it with its cause
        raise PreflightError(f"durable URL {url!r} is unreachable: {type(e).__name__}: {e}") from e


def preflight(cfg: RootConfig, runner: slurm.Runner = slurm.run_command) -> None:
    """Check the container image, the durable store and the partition before anything is submitted."""
    c = cfg.cluster
    if c.container.image and not Path(expand(c.container.image)).is_file():
        raise PreflightError(f"cluster.container.image={c.container.image!r} does not exist")
    check_durable(expand(c.durable) if c.durable else str(run_root(cfg.run.root)))
    module = cfg.run.entry.partition(":")[0]
    if not c.container.image and importlib.util.find_spec(module) is None:  # an image brings its own code
        raise PreflightError(f"run.entry={cfg.run.entry!r}: module {module!r} is not importable here")
    if c.kind == "slurm":
        if not slurm.have_slurm():
            raise PreflightError("a Slurm profile was chosen but `sbatch` is not on PATH (CLUSTER=local?)")
        if c.partition:
            known = slurm.partitions(runner)
            if c.partition not in known:
                raise PreflightError(f"cluster.partition={c.partition!r} is unknown to Slurm; partitions: "
                                     f"{', '.join(known)}")


@dataclass
class Launched:
    run: str
    job_id: str
    job: object  # submitit Job (local: holds the controller process)
    interrupted: bool = False  # a Ctrl-C arrived while it was being submitted


@contextmanager
def _jobs_shielded(detach: bool):
    """Processes started inside never act on the terminal's Ctrl-C (nor, detached, on its hangup); a Ctrl-C that
    arrives meanwhile is recorded in the yielded list, not lost.

    SIGINT is blocked in this thread, and children inherit the mask: the job (`run_job`) sets SIGINT to SIG_IGN
    before unblocking it, and submitit's controller keeps it blocked. Here a recording handler stands in for
    the usual one, so the Ctrl-C is kept whichever thread the kernel hands it to (native threads, e.g. BLAS's,
    do not block it); unblocking delivers one that waited in this thread. SIGHUP is ignored outright.
    """
    caught: list[int] = []
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    old_int = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN) if detach else None
    try:
        yield caught
    finally:
        if signal.SIGINT not in old_mask:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # runs the recorder for a pending one
        signal.signal(signal.SIGINT, old_int)
        if detach:
            signal.signal(signal.SIGHUP, old_hup)


def _wrapper(sweep: Sweep) -> str:
    dst = sweep.dir / ".r2i" / "step.sh"
    dst.parent.mkdir(exist_ok=True)
    shutil.copyfile(slurm.STEP_WRAPPER, dst)
    return str(dst)


def slurm_job_parameters(sweep: Sweep, run: str, c: ClusterConfig) -> tuple[dict, str]:
    """SlurmExecutor parameters and srun command of one run (what render_sbatch shows)."""
    paths = sweep.paths(run)
    binds = [str(sweep.dir.parent)] + [expand(c.scratch)]
    if paths.durable and is_local_url(paths.durable):
        binds.append(expand(local_path(c.durable)) if c.durable else "")
    return slurm.sbatch_parameters(c, f"r2i:{sweep.name}/{run}", str(sweep.dir / ".r2i" / "step.sh"),
                                   str(paths.slurm_dir), binds, sys.executable)


def _launch(sweep: Sweep, run: str, how: str, detach: bool) -> Launched:
    import submitit

    cfg = sweep.config(run)
    paths = sweep.paths(run)
    interrupted = False
    paths.slurm_dir.mkdir(parents=True, exist_ok=True)
    c = cfg.cluster
    if c.kind == "slurm":
        params, python = slurm_job_parameters(sweep, run, c)
        try:
            executor = submitit.SlurmExecutor(folder=paths.slurm_dir, python=python)  # needs srun on PATH
            executor.update_parameters(**params)
            job = executor.submit(run_job, str(paths.run_dir))
        except Exception as e:  # noqa: BLE001 - sbatch's refusal (or no srun), reported with its text
            raise OrchestratorError(f"submitting run {run} failed: {e}") from e
    else:
        # the job runs under the OOM watcher: a kill by the kernel's OOM killer is recorded as such, not requeued
        executor = submitit.LocalExecutor(folder=paths.slurm_dir, python=oom.watch_command(paths.run_dir))
        executor.update_parameters(timeout_min=c.time_min, signal_delay_s=c.signal_grace_s)
        # The job must not see the terminal's Ctrl-C (submitit's controller would SIGKILL it a second later);
        # the foreground display turns Ctrl-C into SIGTERM -> stop with a commit.
        with _jobs_shielded(detach) as caught:
            job = executor.submit(run_job, str(paths.run_dir))
        interrupted = bool(caught)
    sweep.record_submission(run, str(job.job_id), c.kind, how=how)
    return Launched(run, str(job.job_id), job, interrupted)


def _launch_all(sweep: Sweep, runs: list[str], how: str, detach: bool) -> list[Launched]:
    """Launch in order; a Ctrl-C during a local submit stops here (the rest stay unsubmitted, resumable)."""
    launched: list[Launched] = []
    for i, run in enumerate(runs):
        launched.append(_launch(sweep, run, how, detach))
        if launched[-1].interrupted:
            rest = runs[i + 1:]
            print(f"Ctrl-C during the submit of {run}: stopping the started job(s) with a commit"
                  + (f"; not submitted: {', '.join(rest)}" if rest else ""))
            break
    return launched


def check_resources(cfgs: list[RootConfig], profile: str, force: bool = False,
                    runner: slurm.Runner = slurm.run_command) -> None:
    """resources.check once per distinct run shape; local runs all start at once, so they share the machine."""
    seen = set()
    for cfg in cfgs:
        key = repr((cfg.agent, cfg.env, cfg.train, cfg.replay, cfg.cluster))
        if key not in seen:
            seen.add(key)
            at_once = len(cfgs) if cfg.cluster.kind == "local" else 1
            resources.check(cfg, profile, runs_at_once=at_once, force=force, runner=runner)


def _plan(exp: str, seeds: list[int] | None, args: list[str], profile: str | None, kind: str,
          experiments_dir: Path, force: bool = False, runner: slurm.Runner = slurm.run_command):
    profile = profile or default_profile(kind)
    runs = compose_runs(exp, seeds, args + [f"cluster.kind={kind}"], profile, experiments_dir=experiments_dir)
    check_resources([spec.cfg for spec in runs], profile, force, runner)
    seen = set()
    for spec in runs:  # one check per distinct cluster section
        key = repr(spec.cfg.cluster)
        if key not in seen:
            seen.add(key)
            preflight(spec.cfg)
    return profile, runs


def submit(exp: str, seeds: list[int] | None = None, args: str | list[str] = (), sweep_name: str = "",
           cluster: str = "auto", profile: str | None = None, detach: bool = False,
           follow: bool = True, experiments_dir: Path = EXPERIMENTS_DIR, force: bool = False,
           runner: slurm.Runner = slurm.run_command) -> tuple[Sweep, list[Launched]]:
    """Compose, check (resources, then paths and partition), create (or, for the same request, resume) the sweep
    and submit its runs. `force` submits a run the profile cannot hold by the estimate (with a warning)."""
    kind = resolve_cluster(cluster)
    argv = split_args(args)
    profile, runs = _plan(exp, seeds, argv, profile, kind, experiments_dir, force, runner)
    request = Request(exp=exp, seeds=list(seeds) if seeds else None, args=argv, profile=profile)
    root = run_root(runs[0].cfg.run.root)
    existing = open_sweep(root, sweep_name) if sweep_name and (root / sweep_name / "sweep.json").exists() \
        else (None if sweep_name else find_matching(root, request))
    if existing is not None:
        if existing.request != request:
            raise SweepError(f"sweep {existing.name!r} exists with a different request ({existing.request}); "
                             f"use `make resume SWEEP={existing.name}` or another SWEEP name")
        print(f"sweep {existing.name} exists with the same request: resuming it")
        return resume(existing.name, root=root, detach=detach, follow=follow, force=force, checked=True)
    name = sweep_name or f"{exp}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    sweep = create_sweep(root, name, request, runs)
    if kind == "slurm":
        _wrapper(sweep)
    launched = _launch_all(sweep, [spec.name for spec in runs], "submit", detach)
    _report(sweep, launched, kind, detach, follow)
    return sweep, launched


def _active(sweep: Sweep, run: str, queue: dict) -> bool:
    subs = sweep.submissions(run)
    if not subs:
        return False
    last = subs[-1]
    if last["cluster"] == "local":
        return pid_alive(last["job_id"])
    q = queue.get(last["job_id"])
    return bool(q and q["state"] in LIVE)


def resume(sweep_name: str, root: Path | None = None, detach: bool = False, follow: bool = True,
           force: bool = False, checked: bool = False) -> tuple[Sweep, list[Launched]]:
    """Resubmit every run that is neither done nor queued/running; its state comes from the durable store."""
    sweep = open_sweep(root or run_root(), sweep_name)
    ids = [s["job_id"] for r in sweep.runs for s in sweep.submissions(r)[-1:] if s["cluster"] == "slurm"]
    queue = slurm.squeue(ids)
    todo = []
    for run in sweep.runs:
        state = read_run_state(sweep.paths(run).state)
        if state is not None and state.state == "done":
            continue
        if _active(sweep, run, queue):
            print(f"{run}: still queued or running, left alone")
            continue
        todo.append(run)
    kinds = {sweep.config(r).cluster.kind for r in todo}
    if todo and not checked:
        check_resources([sweep.config(r) for r in todo], sweep.request.profile, force)
    for cfg in {repr(sweep.config(r).cluster): sweep.config(r) for r in todo}.values():
        preflight(cfg)
    if "slurm" in kinds:
        _wrapper(sweep)
    launched = _launch_all(sweep, todo, "resume", detach)
    if not launched:
        print(f"sweep {sweep.name}: nothing to resume")
        return sweep, []
    _report(sweep, launched, kinds.pop() if len(kinds) == 1 else "mixed", detach, follow)
    return sweep, launched


def cancel(sweep_name: str, root: Path | None = None) -> list[str]:
    """Stop every live job of the sweep (Slurm: scancel; local: SIGTERM, which commits first)."""
    sweep = open_sweep(root or run_root(), sweep_name)
    slurm_ids, stopped = [], []
    for run in sweep.runs:
        for s in sweep.submissions(run)[-1:]:
            if s["cluster"] == "slurm":
                slurm_ids.append(s["job_id"])
            else:
                try:
                    os.kill(int(s["job_id"]), signal.SIGTERM)
                    stopped.append(s["job_id"])
                except (OSError, ValueError):
                    pass
    live = [j for j, q in slurm.squeue(slurm_ids).items() if q["state"] in LIVE]
    slurm.cancel(live)
    return live + stopped


def _report(sweep: Sweep, launched: list[Launched], kind: str, detach: bool, follow: bool) -> None:
    for item in launched:
        print(f"{sweep.name}/{item.run}: {kind} job {item.job_id}")
    print(f"sweep folder: {sweep.dir}")
    print(f"status: make status SWEEP={sweep.name}   (python -m orchestrator status --sweep {sweep.name})")
    if any(item.interrupted for item in launched):
        follow_local(sweep, launched, stop=True)
    elif kind == "local" and not detach and follow:
        follow_local(sweep, launched)
    elif kind == "local" and detach:
        print(f"running in the background; stop with: make cancel SWEEP={sweep.name}")


def follow_local(sweep: Sweep, launched: list[Launched], refresh_s: float = 1.0, stop: bool = False) -> None:
    """Live table until the local jobs end; Ctrl-C (or `stop`) asks them to stop at the next step boundary."""
    from rich.live import Live

    procs = [item.job._process for item in launched if getattr(item.job, "_process", None) is not None]
    console = status_console()
    stopping = stop
    for p in procs if stop else []:
        p.send_signal(signal.SIGTERM)
    with Live(table(sweep.name, sweep_status(sweep)), console=console, refresh_per_second=2) as live:
        while any(p.poll() is None for p in procs):
            try:
                time.sleep(refresh_s)
                live.update(table(sweep.name, sweep_status(sweep)))
            except KeyboardInterrupt:
                if not stopping:
                    console.print("stopping at the next step boundary (committing) ...")
                stopping = True
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
        live.update(table(sweep.name, sweep_status(sweep)))
    if stopping:
        console.print(f"stopped; run the same command again (or make resume SWEEP={sweep.name}) to resume")
