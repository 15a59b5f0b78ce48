"""`python -m orchestrator <submit|status|report|cancel|resume|eval>` (console script `r2i`), called by the Makefile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from orchestrator.config import OrchestratorError


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"SEEDS={text!r} must be comma-separated integers") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r2i", description="Submit and follow R2I sweeps (Slurm or local).")
    p.add_argument("--root", type=Path, default=None,
                   help="sweeps root (default: run.root, $R2I_RUN_ROOT, <repo>/runs)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="compose an experiment and submit its runs")
    s.add_argument("--exp", required=True, help="experiments/exp/<EXP>.yaml")
    s.add_argument("--seeds", type=_seeds, default=None, help="e.g. 0,1,2")
    s.add_argument("--sweep", default="",
                   help="sweep name (default: the same request's sweep, else <exp>-<time>)")
    s.add_argument("--cluster", default="auto", choices=("auto", "slurm", "local"))
    s.add_argument("--profile", default=None,
                   help="slurm/profiles/<PROFILE>.yaml (default: dev on Slurm, else local)")
    s.add_argument("--detach", action="store_true",
                   help="local executor: leave the jobs running in the background")
    s.add_argument("--args", default="",
                   help='hydra overrides, e.g. "agent.model_opt.lr=1e-4,3e-4 env.memory_length=50"')
    s.add_argument("overrides", nargs="*", help="more hydra overrides")
    s.add_argument("--force", action="store_true",
                   help="submit even when the memory estimate exceeds the profile (or this machine)")
    st = sub.add_parser("status", help="one row per run of a sweep")
    st.add_argument("--sweep", required=True)
    st.add_argument("--json", action="store_true", help="print JSON instead of the table")
    rp = sub.add_parser("report", help="curves across seeds per config group and final scores -> <sweep>/report.html")
    rp.add_argument("--sweep", required=True)
    rp.add_argument("--last", type=int, default=None, help="rows per seed the final score averages (default 5)")
    c = sub.add_parser("cancel", help="cancel every live job of a sweep")
    c.add_argument("--sweep", required=True)
    r = sub.add_parser("resume", help="resubmit the runs that are neither done nor queued")
    r.add_argument("--sweep", required=True)
    r.add_argument("--detach", action="store_true")
    r.add_argument("--force", action="store_true", help="resubmit even when the memory estimate does not fit")
    e = sub.add_parser("eval", help="evaluate the newest commit of a run, read-only -> <run>/eval/<commit>.json")
    e.add_argument("--run", required=True, type=Path,
                   help="the run folder: a path, or <sweep>/<run> under the sweeps root")
    e.add_argument("--episodes", type=_positive, default=None, help="default: the run's eval.episodes")
    e.add_argument("--seed", type=int, default=None,
                   help="derive the eval envs and keys from this seed (default: the run's, which repeats the "
                        "evaluation the run logged at that env step)")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return n


def _evaluate(run: Path, root: Path | None, episodes: int | None, seed: int | None) -> None:
    """`make eval`: the newest commit of a run, evaluated without writing to its durable store."""
    from buffer import DurableStoreError
    from orchestrator.config import agent_run_config, load_run_config
    from orchestrator.sweep import SweepError, run_paths, run_root

    run_dir = run if (run / "config.yaml").exists() else (root or run_root()) / run
    if not (run_dir / "config.yaml").exists():
        raise SweepError(f"{run} is not a run folder (no config.yaml there, nor under {root or run_root()})")
    run_dir = run_dir.resolve()
    cfg = load_run_config(run_dir / "config.yaml")
    paths = run_paths(cfg, run_dir.parent, run_dir.name).resolved()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(run_dir.parent / ".jax-cache"))  # the sweep's, as jobs
    from agent.evaluate import EvalError, evaluate_commit

    try:
        result, path = evaluate_commit(agent_run_config(cfg), paths.durable, run_dir, episodes, seed)
    except (EvalError, DurableStoreError) as err:
        raise SweepError(str(err)) from err
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.row().items() if k != "env_steps")
    print(f"commit {result.commit} at env step {result.env_steps}: {len(result.returns)} episodes, {summary}")
    print(f"wrote {path}" + "".join(f"\n      {run_dir / m}" for m in result.media.values()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from orchestrator import launch, status
    from orchestrator.compose import split_args
    from orchestrator.sweep import open_sweep, run_root

    try:
        if args.cmd == "submit":
            launch.submit(args.exp, args.seeds, split_args(args.args) + list(args.overrides), args.sweep,
                          args.cluster, args.profile, args.detach, force=args.force)
        elif args.cmd == "resume":
            launch.resume(args.sweep, root=args.root, detach=args.detach, force=args.force)
        elif args.cmd == "eval":
            _evaluate(args.run, args.root, args.episodes, args.seed)
        elif args.cmd == "cancel":
            ids = launch.cancel(args.sweep, root=args.root)
            print(f"cancelled: {', '.join(ids) or 'nothing was running'}")
        elif args.cmd == "status":
            sweep = open_sweep(args.root or run_root(), args.sweep)
            rows = status.sweep_status(sweep)
            html_path = status.write_html(sweep, rows)
            if args.json:
                print(status.to_json(sweep.name, rows))
            else:
                console = status.console()
                console.print(status.table(sweep.name, rows))
                for r in rows:
                    for w in r.warnings:
                        console.print(f"[yellow]{r.run}: {w}[/yellow]")
                console.print(f"learning curves: {html_path}")
        elif args.cmd == "report":
            from orchestrator import report

            sweep = open_sweep(args.root or run_root(), args.sweep)
            made = report.write_report(sweep, report.LAST_ROWS if args.last is None else args.last)
            console = status.console()
            console.print(report.rich_table(sweep.name, made))
            console.print(f"report: {made.page} ({', '.join(p.name for p in made.images) or 'no curves yet'})")
    except OrchestratorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
