"""`python -m orchestrator <submit|status|cancel|resume>` (console script `r2i`), called by the Makefile."""

from __future__ import annotations

import argparse
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
    c = sub.add_parser("cancel", help="cancel every live job of a sweep")
    c.add_argument("--sweep", required=True)
    r = sub.add_parser("resume", help="resubmit the runs that are neither done nor queued")
    r.add_argument("--sweep", required=True)
    r.add_argument("--detach", action="store_true")
    r.add_argument("--force", action="store_true", help="resubmit even when the memory estimate does not fit")
    return p


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
                from rich.console import Console

                console = Console() if sys.stdout.isatty() else Console(width=220)
                console.print(status.table(sweep.name, rows))
                for r in rows:
                    for w in r.warnings:
                        console.print(f"[yellow]{r.run}: {w}[/yellow]")
                console.print(f"learning curves: {html_path}")
    except OrchestratorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
