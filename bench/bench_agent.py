"""Agent micro-benchmark: train-step compile/run time, XLA FLOPs vs a measured matmul peak, policy steps/s.

    python -m bench.bench_agent [--quick] [--presets tiny,tmaze] [--precisions float32,bfloat16]
                                [--out bench/results/agent.json]

FLOPs come from XLA's cost analysis of the compiled step. It counts each while-loop body once (the imagination
scan over the horizon and the scan over SSM layers), so `flops_per_step` and `utilisation` are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from agent.config import agent_config_from
from agent.device import device_fingerprint
from agent.learner import make_learner

REPO = Path(__file__).resolve().parents[1]
OBS = {"tiny": {"vector": (8,)}, "tmaze": {"vector": (3,)}, "popgym": {"vector": (4,)},
       "mmaze": {"image": (64, 64, 3)}, "tiny_image": {"image": (64, 64, 3)}}
ACTIONS = {"tiny": 3, "tmaze": 4, "popgym": 4, "mmaze": 6, "tiny_image": 6}


def cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def matmul_peak(n: int, reps: int) -> dict:
    """Best f32 matmul throughput of an (n, n) @ (n, n) jitted product, in GFLOP/s."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return {"n": n, "gflops": 2 * n**3 / best / 1e9, "best_s": best}


def make_batch(spec: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in spec.items():
        if k == "image":
            out[k] = rng.integers(0, 256, s.shape, dtype=np.uint8)
        elif k == "action":
            out[k] = rng.integers(0, 2, s.shape).astype(np.int32)
        elif s.dtype == jnp.bool_:
            out[k] = rng.random(s.shape) < 0.02
        else:
            out[k] = rng.normal(size=s.shape).astype(np.float32)
    return out


def bench_preset(name: str, batch: int, length: int, steps: int, envs: int, policy_steps: int, peak: float,
                 precision: str = "float32"):
    base = "tiny" if name == "tiny_image" else name
    conf = OmegaConf.load(REPO / "experiments" / "agent" / f"{base}.yaml")
    conf.precision = precision
    cfg = agent_config_from(conf)
    learner = make_learner(cfg, OBS[name], ACTIONS[name])
    t = time.perf_counter()
    state = jax.jit(learner.init)(jax.random.PRNGKey(0))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    spec = learner.batch_spec(batch, length)
    t = time.perf_counter()
    lowered = jax.jit(learner.train_step).lower(state, spec, jax.random.PRNGKey(1))
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    step = lowered.compile()
    compile_s = time.perf_counter() - t
    flops = cost_flops(step)
    batches = [make_batch(spec, i) for i in range(2)]
    state, _ = step(state, batches[0], jax.random.PRNGKey(0))  # warm-up
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, metrics = step(state, batches[i % 2], jax.random.PRNGKey(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    policy = jax.jit(learner.policy_step)
    carry = learner.init_policy_carry(envs)
    obs = {k: (np.zeros((envs, *s), np.uint8) if k == "image" else np.zeros((envs, *s), np.float32))
           for k, s in OBS[name].items()}
    first = np.ones(envs, bool)
    t = time.perf_counter()
    carry, action = policy(state.params, carry, obs, first, jax.random.PRNGKey(0))
    jax.block_until_ready(action)
    policy_compile_s = time.perf_counter() - t
    first = np.zeros(envs, bool)
    t = time.perf_counter()
    for i in range(policy_steps):
        carry, action = policy(state.params, carry, obs, first, jax.random.PRNGKey(i))
        np.asarray(action)  # the env loop needs the actions on the host every step
    policy_s = (time.perf_counter() - t) / policy_steps
    return {
        "preset": name, "precision": precision, "obs": {k: list(s) for k, s in OBS[name].items()},
        "params": n_params,
        "batch": batch, "length": length, "init_s": init_s, "lower_s": lower_s, "compile_s": compile_s,
        "train_step_s": step_s, "train_step_s_all": times, "frames_per_s": batch * length / step_s,
        "flops_per_step": flops, "achieved_gflops": flops / step_s / 1e9,
        "utilisation_vs_matmul_peak": flops / step_s / 1e9 / peak,
        "policy_envs": envs, "policy_compile_s": policy_compile_s, "policy_step_s": policy_s,
        "policy_env_steps_per_s": envs / policy_s, "policy_steps_per_s_per_env": 1 / policy_s,
        "final_metrics": {k: float(v) for k, v in metrics.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny presets, small batch, few repetitions")
    ap.add_argument("--presets", default=None, help="comma list of presets (default: quick=tiny,tiny_image)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--precisions", default="float32", help="agent.precision values, each measured in turn")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "agent.json"))
    args = ap.parse_args()
    quick = args.quick
    presets = (args.presets or ("tiny,tiny_image" if quick else "tiny,tmaze,tiny_image")).split(",")
    batch = args.batch or (4 if quick else 16)
    length = args.length or (16 if quick else 64)
    peak = matmul_peak(1024 if quick else 2048, 5 if quick else 10)
    results = []
    for name in presets:
        for precision in args.precisions.split(","):
            res = bench_preset(name, batch, length, steps=3 if quick else 10, envs=8,
                               policy_steps=50 if quick else 200, peak=peak["gflops"], precision=precision)
            print(json.dumps({k: v for k, v in res.items() if k not in ("final_metrics", "train_step_s_all")}),
                  flush=True)
            results.append(res)
    out = {
        "quick": quick, "device": str(jax.devices()[0]), "backend": jax.default_backend(),
        "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "jax": jax.__version__, "precisions": args.precisions.split(","), "load_avg_1m": os.getloadavg()[0],
        "device_fingerprint": device_fingerprint().to_json(),
        "matmul_peak": peak, "results": results,
        "note": "XLA cost analysis counts while-loop bodies once: FLOPs and utilisation are lower bounds.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
