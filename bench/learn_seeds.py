"""A recipe over several seeds: run `bench.learn` once per seed, then judge and plot every seed's curve together.

    python -m bench.learn_seeds --recipe tmaze_passive_L20 --seeds 0,1,2,3,4 [--parallel 2] [--set k=v ...]
    python -m bench.learn_seeds --recipe tmaze_passive_L20 --seeds 0,1,2,3,4 --summarise   # recorded runs only

Each seed is a separate `bench.learn` process (name `<recipe>_seed<N>`, so each writes its own
bench/results/learn_<recipe>_seed<N>.json and .png). A seed has learned when its metric, averaged over the rows of
the last `--hold` env steps, is at least the recipe's target: a curve that touches the target once and slides
back does not count. Writes bench/results/learn_<recipe>_seeds.json and a PNG with every seed's curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.learn import RECIPES, RESULTS, first_reached


@dataclasses.dataclass(frozen=True)
class SeedVerdict:
    seed: int
    env_steps: int  # where the curve ends
    first_reached: int | None  # env steps of the first row at or above the target
    hold_mean: float  # the metric's mean over the rows of the last `hold` env steps
    hold_min: float
    learned: bool  # hold_mean >= target
    wall_time_s: float


def judge(result: dict, seed: int, hold: int) -> SeedVerdict:
    """One seed's verdict from its bench.learn result (the curve's rows are 2k-step windows of episodes)."""
    key, target = result["metric"], result["target"]
    assert target is not None, f"{result['name']}: the recipe has no target to judge against"
    rows = [r for r in result["curve"] if key in r]
    end = rows[-1]["env_steps"]
    tail = [r[key] for r in rows if r["env_steps"] > end - hold]
    first = first_reached(rows, key, target)
    mean = sum(tail) / len(tail)
    return SeedVerdict(seed=seed, env_steps=end, first_reached=None if first is None else first["env_steps"],
                       hold_mean=round(mean, 4), hold_min=round(min(tail), 4), learned=mean >= target,
                       wall_time_s=round(result["wall_time_s"]))


def run_seeds(recipe: str, seeds: list[int], parallel: int, overrides: list[str], workdir: str) -> None:
    """One `bench.learn` process per seed, at most `parallel` at once; fails naming the seeds whose run failed."""
    Path(workdir).mkdir(parents=True, exist_ok=True)

    def run(s: int) -> int:
        cmd = [sys.executable, "-m", "bench.learn", "--recipe", recipe, "--seed", str(s),
               "--name", f"{recipe}_seed{s}", "--workdir", workdir, *(["--set", *overrides] if overrides else [])]
        log = Path(workdir) / f"{recipe}_seed{s}.log"
        print(f"seed {s}: started (log {log})", flush=True)
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        print(f"seed {s}: exit {rc}", flush=True)
        return rc

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        failed = [s for s, rc in zip(seeds, pool.map(run, seeds), strict=True) if rc]
    if failed:
        raise SystemExit(f"bench.learn_seeds: the runs of seeds {failed} failed (logs in {workdir})")


def plot(recipe: str, results: dict[int, dict], verdicts: list[SeedVerdict], target: float, hold: int,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for v in verdicts:
        r = results[v.seed]
        pts = [(row["env_steps"], row[r["metric"]]) for row in r["curve"] if r["metric"] in row]
        held = "" if v.learned else " (not held)"
        ax.plot(*zip(*pts, strict=True), lw=1.2,
                label=f"seed {v.seed}: {v.hold_mean:.2f} over the last {hold // 1000}k steps{held}")
    ax.axhline(target, color="k", ls=":", lw=0.8)
    ax.set_xlabel("env steps")
    ax.set_ylabel(results[verdicts[0].seed]["metric"])
    n = sum(v.learned for v in verdicts)
    ax.set_title(f"{recipe}: {n} of {len(verdicts)} seeds hold >= {target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tmaze_passive_L20",
                    choices=sorted(r for r in RECIPES if RECIPES[r]["target"] is not None))
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once (each uses about one core)")
    ap.add_argument("--hold", type=int, default=20_000, help="env steps at the end over which the target must hold")
    ap.add_argument("--set", nargs="*", default=[], help="hydra overrides for every seed")
    ap.add_argument("--workdir", default="/tmp/r2i-learn-seeds")
    ap.add_argument("--summarise", action="store_true", help="judge the recorded results only; run nothing")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r} must be comma-separated integers")
    if not args.summarise:
        run_seeds(args.recipe, seeds, args.parallel, args.set, args.workdir)
    results = {}
    for s in seeds:
        p = RESULTS / f"learn_{args.recipe}_seed{s}.json"
        if not p.exists():
            raise SystemExit(f"bench.learn_seeds: {p} is missing (run without --summarise to make it)")
        results[s] = json.loads(p.read_text())
    verdicts = [judge(results[s], s, args.hold) for s in seeds]
    target = results[seeds[0]]["target"]
    out = {"recipe": args.recipe, "target": target, "hold_env_steps": args.hold,
           "learned": sum(v.learned for v in verdicts), "seeds": [dataclasses.asdict(v) for v in verdicts],
           "overrides": results[seeds[0]]["overrides"]}
    (RESULTS / f"learn_{args.recipe}_seeds.json").write_text(json.dumps(out, indent=1))
    plot(args.recipe, results, verdicts, target, args.hold, RESULTS / f"learn_{args.recipe}_seeds.png")
    for v in verdicts:
        print(f"seed {v.seed}: first >= {target} at {v.first_reached}, mean {v.hold_mean:.3f} (min {v.hold_min:.2f}) "
              f"over the last {args.hold} steps: {'learned' if v.learned else 'not held'}")
    print(f"{out['learned']} of {len(seeds)} seeds learned")


if __name__ == "__main__":
    main()
