"""Learning curves on CPU: train a preset on an env through the real training loop and record the curve.

    python -m bench.learn --recipe tmaze_passive_L20          # a named, recorded setting (RECIPES below)
    python -m bench.learn --agent tmaze_small --env tmaze_passive --steps 60000 [--set train.batch=8 ...]

Every config is composed by hydra from experiments/ (`orchestrator.compose`), as `make submit` composes it.

Writes bench/results/learn_<name>.json (curve, wall time, final success/return, the step and wall time at which
the target was first reached, config) and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
import uuid
from math import inf
from pathlib import Path

from omegaconf import OmegaConf

from agent.run_config import AgentRunConfig
from agent.train import RunContext, train
from orchestrator.compose import compose_runs
from orchestrator.config import agent_run_config

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

# What an in-process benchmark run changes of an experiment: nothing synced, no separate evaluation (success and
# returns are those of the training episodes: the policy samples its actions, as in the reference), a commit every
# 5 minutes. None of it is part of the trajectory.
BENCH = ["wandb.mode=disabled", "eval.every=0", "train.commit_every_min=5.0"]
# The settings behind the curves in the README: experiments (experiments/exp/), the same that `make submit` runs.
RECIPES: dict[str, dict] = {
    "tmaze_passive_L20": dict(exp="tmaze20", target=0.95),
    "popgym_repeat_previous_easy": dict(exp="popgym_small", target=None),
}
ADHOC = "learn"  # the experiment of --agent/--env runs


def compose_exp(exp: str, overrides: list[str], seed: int) -> AgentRunConfig:
    """An experiment as a benchmark runs it (BENCH, then `overrides`: hydra overrides, one run)."""
    runs = compose_runs(exp, [seed], [*BENCH, *overrides], "local")
    if len(runs) != 1:
        raise ValueError(f"bench.learn runs one config; the overrides {overrides} make {len(runs)} (a sweep)")
    return agent_run_config(runs[0].cfg)


def compose(agent: str, env: str, steps: int, overrides: list[str], seed: int) -> AgentRunConfig:
    """An ad-hoc run: `agent` and `env` presets with the CPU loop of experiments/exp/learn.yaml, a replay that holds
    max(steps, 100k) steps, then `overrides`."""
    return compose_exp(ADHOC, [f"agent={agent}", f"env={env}", f"train.steps={steps}",
                               f"replay.capacity={max(steps, 100_000)}", *overrides], seed)


def read_curve(log_dir: Path) -> list[dict]:
    """metrics.jsonl rows joined with the wall time of perf.jsonl (kept apart there to stay deterministic)."""
    wall = {}
    for line in (log_dir / "perf.jsonl").read_text().splitlines():
        r = json.loads(line)
        wall[r["env_steps"]] = r["perf/wall_time_s"]
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return [{**r, "wall_time_s": wall.get(r["env_steps"])} for r in rows]


def first_reached(curve: list[dict], key: str, target: float) -> dict | None:
    """The first row of `curve` whose `key` is at least `target` (rows without `key` skipped)."""
    return next((r for r in curve if r.get(key, -inf) >= target), None)


def plot(curve: list[dict], key: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["env_steps"], r[key]) for r in curve if key in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if pts:
        ax.plot(*zip(*pts, strict=True), marker=".")
    ax.set_xlabel("env steps")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(RECIPES), help="a named setting (an experiment); --set adds to it")
    ap.add_argument("--agent", default="tmaze_small", help="experiments/agent/<name>.yaml")
    ap.add_argument("--env", default="tmaze_passive", help="experiments/env/<name>.yaml")
    ap.add_argument("--steps", type=int, default=None, help="env steps (default: the recipe's, else 60000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="hydra overrides, e.g. train.batch=16 env.memory_length=50")
    ap.add_argument("--name", default="")
    ap.add_argument("--workdir", default="/tmp/r2i-learn")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run already in <workdir>/<name> (e.g. with a larger --steps) instead of "
                         "starting over; the curve and wall time continue")
    args = ap.parse_args()
    target = None
    if args.recipe:
        r = RECIPES[args.recipe]
        target = r["target"]
        steps = [f"train.steps={args.steps}"] if args.steps else []
        cfg = compose_exp(r["exp"], [*steps, *args.set], args.seed)
        name = args.name or args.recipe
    else:
        cfg = compose(args.agent, args.env, args.steps or 60_000, args.set, args.seed)
        name = args.name or f"{args.agent}_{cfg.env.name}"
    root = Path(args.workdir) / name
    if not args.resume:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(scratch_dir=str(root / "scratch"), durable_url=str(root / "durable"), log_dir=str(root / "logs"),
                     writer_token=uuid.uuid4().hex, should_stop=lambda: False)
    t0 = time.monotonic()
    outcome = train(cfg, ctx)
    wall = time.monotonic() - t0
    curve = read_curve(root / "logs")
    key = "episode/success" if any("episode/success" in r for r in curve) else "episode/return"
    tail = [r[key] for r in curve[-5:] if key in r]
    reached = None if target is None else first_reached(curve, key, target)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        # over every attempt of the run (perf.jsonl carries the wall time across --resume)
        "name": name, "outcome": outcome, "wall_time_s": curve[-1].get("wall_time_s") or wall,
        "env_steps": cfg.train.steps, "metric": key,
        "final_mean_last5_rows": sum(tail) / len(tail) if tail else None,
        "target": target, "recipe": args.recipe, "exp": RECIPES[args.recipe]["exp"] if args.recipe else ADHOC,
        "overrides": args.set,
        "target_reached_at": None if reached is None else {k: reached.get(k) for k in ("env_steps", "updates",
                                                                                         "wall_time_s")},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0))},
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "curve": [{k: r[k] for k in ("env_steps", "updates", "wall_time_s", key, "episode/return") if k in r}
                  for r in curve],
    }
    (RESULTS / f"learn_{name}.json").write_text(json.dumps(result, indent=1))
    plot(curve, key, f"{name} ({result['wall_time_s'] / 60:.1f} min on CPU)", RESULTS / f"learn_{name}.png")
    print(json.dumps({k: result[k] for k in ("name", "outcome", "wall_time_s", "metric", "final_mean_last5_rows",
                                              "target_reached_at")}))


if __name__ == "__main__":
    main()
