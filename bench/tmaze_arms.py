"""Which arm a T-Maze run entered under which cue, per window of env steps, read from the run's replay.

    python -m bench.tmaze_arms /tmp/r2i-learn/tmaze_passive_L20 [--window 10000] [--recipe tmaze_passive_L20]

A run that never learns the memory usually stopped trying one arm early: the world model can only tell that
the other arm pays under the other cue from episodes that went there. The table shows when that happened and
how many such episodes the replay holds. Reads a copy of the run's durable store (the run may still be going).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

from agent.envs import VecEnv
from agent.train import step_schema
from bench.learn import RECIPES, compose_exp
from buffer import Replay


def arm_counts(vector: np.ndarray, is_first: np.ndarray, is_last: np.ndarray, t0: int, every: int,
               window: int) -> dict[int, np.ndarray]:
    """One stream's steps [t0, t0 + len) -> {window index: (2, 2) counts [cue < 0, cue > 0] x [arm down, up]} of
    the episodes that end in an arm. `vector`: (T, 4) T-Maze observations [x, y, cue, at junction];
    `every`: env steps per stream step (the number of streams), so windows count env steps of the run."""
    out: dict[int, np.ndarray] = {}
    firsts = np.flatnonzero(is_first)
    for a, b in zip(firsts, [*firsts[1:], len(is_first)], strict=True):
        last = b - 1
        if not is_last[last] or vector[last, 1] == 0 or vector[a, 2] == 0:
            continue  # still running, ended in the corridor, or its start (and cue) is outside the window
        c = out.setdefault((t0 + last) * every // window, np.zeros((2, 2), np.int64))
        c[int(vector[a, 2] > 0), int(vector[last, 1] > 0)] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a bench.learn run folder (<workdir>/<name>)")
    ap.add_argument("--recipe", default="tmaze_passive_L20", choices=sorted(RECIPES))
    ap.add_argument("--window", type=int, default=10_000, help="env steps per row")
    args = ap.parse_args()
    cfg = compose_exp(RECIPES[args.recipe]["exp"], [], 0)
    if cfg.env.kind != "tmaze":
        raise SystemExit(f"--recipe {args.recipe} is not a T-Maze recipe (env.kind={cfg.env.kind})")
    work = Path(tempfile.mkdtemp(prefix="r2i-tmaze-arms-"))
    try:
        shutil.copytree(Path(args.run) / "durable", work / "durable")
        env = VecEnv(cfg.env, cfg.train.num_envs, seed=0, processes=False)
        schema = step_schema(env.obs_spec())
        env.close()
        w_n = cfg.train.num_envs
        with Replay(schema, w_n, str(work / "scratch"), str(work / "durable"), cfg.replay, batch=1, length=1,
                    writer_token=uuid.uuid4().hex) as rep:
            if rep.restore() is None:
                raise SystemExit(f"{args.run}/durable holds no commit")
            lo, t = rep.info["lo"], rep.info["t"]
            total: dict[int, np.ndarray] = {}
            for w in range(w_n):
                d = rep.read(w, lo, t)
                for k, c in arm_counts(d["vector"], d["is_first"], d["is_last"], lo, w_n, args.window).items():
                    total[k] = total.get(k, 0) + c
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("env steps        | cue -: down    up | cue +: down    up | right arm")
    for k in sorted(total):
        c = total[k]
        print(f"{k * args.window:>7d}-{(k + 1) * args.window:<8d} | {c[0, 0]:11d} {c[0, 1]:5d} | "
              f"{c[1, 0]:11d} {c[1, 1]:5d} | {(c[0, 0] + c[1, 1]) / max(1, c.sum()):.2f}")


if __name__ == "__main__":
    main()
