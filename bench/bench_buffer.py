"""Replay buffer benchmark (`make bench-buffer`): add, sample, commit and restore, with same-run baselines.

Run as `python -m bench.bench_buffer [--quick]` (`make bench-buffer`); writes bench/results/buffer.json.
The workload (schema, frames, step source) is in bench/buffer_workload.py, the durable-store parts (commit,
metadata growth, restore) in bench/bench_buffer_store.py.
Frames are real Memory Maze 9x9 frames (64x64x3 uint8) rendered by the project's env adapter under a walking
policy (mostly forward, turning now and then), so every codec sees what training stores; where Memory Maze cannot
render, synthetic frames with the same zstd-1 ratio (textured walls and floor, moving objects, sensor noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_buffer_store import bench_commit, bench_manifest_growth, bench_restore, extrapolate_restore
from bench.buffer_workload import (
    SCHEMA,
    StepSource,
    bench_codecs,
    dir_bytes,
    drop_cache,
    fill,
    fill_cpu,
    frame_pool,
    make_frames,
)
from buffer import Replay, ReplayConfig
from buffer.codec import ShardCodec
from buffer.sampling import plan_batch


def bench_add(work: Path, pool: np.ndarray, steps: int, level: int = 1,
              settings: tuple[tuple[int, int], ...] = ((1, 1), (16, 1), (16, 2)), codec: str = "zstd") -> dict:
    out = {}
    for w, threads in settings:
        d = work / f"add-{w}-{threads}-{codec}{level}"
        d.mkdir(parents=True)
        cfg = ReplayConfig(capacity=10**8, threads=threads, zstd_level=level, codec=codec)
        with Replay(SCHEMA, w, str(d / "s"), str(d / "d"), cfg, batch=1, length=1, writer_token="b") as r:
            dt, cpu = fill_cpu(r, StepSource(w, pool), steps // w)
            n = (steps // w) * w
            out[f"W{w}_threads{threads}"] = {"steps": n, "seconds": dt, "steps_per_s": n / dt,
                                             "cpu_s": cpu, "steps_per_cpu_s": n / cpu}
        shutil.rmtree(d)
    return out


def memmap_baseline(path: Path, pool: np.ndarray, w: int, t: int) -> None:
    """The reference design's layout: one uncompressed (W, T, 64, 64, 3) file holding the same frames."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(w, t, 64, 64, 3))
    src = StepSource(w, pool)
    for i in range(t):
        mm[:, i] = src.next()["image"]
    mm.flush()
    del mm


def memmap_read(mm: np.ndarray, plan: tuple[np.ndarray, np.ndarray], length: int) -> np.ndarray:
    return np.stack([mm[a, s:s + length] for a, s in zip(*plan, strict=True)])


def bench_sample(work: Path, pool: np.ndarray, steps: int, rounds: int, inner: int,
                 shapes: list[tuple[int, int]], compute_ms: float, level: int = 1, warm_only: bool = False,
                 codec: str = "zstd", cores: tuple[int, ...] = ()) -> dict:
    """sample() against a memmap read of the very same sequences, in three regimes:
    warm (page cache) back to back; cold (our files evicted before each batch); and learner-like, where a
    simulated train step of `compute_ms` separates samples and we time the sample() call only.
    `warm_only`: the warm regime without prefetch (comparing zstd levels).
    `cores`: instead, the warm regime with the process confined to each of these numbers of cores in turn
    (the memmap read too), to see how the ratio scales with cores."""
    if cores:
        return {f"cores{n}": _on_cores(n, lambda: bench_sample(work, pool, steps, rounds, inner, shapes,
                                                               compute_ms, level, True, codec))
                for n in cores if n <= len(os.sched_getaffinity(0))}
    w, d = 16, work / f"sample-inner{inner}-{codec}{level}"
    t = steps // w
    d.mkdir(parents=True)
    cfg0 = ReplayConfig(capacity=10**8, fsync=False, inner=inner, zstd_level=level, codec=codec)
    base = Replay(SCHEMA, w, str(d / "s"), str(d / "d"), cfg0, batch=1, length=1, writer_token="b")
    fill(base, StepSource(w, pool), t)
    base.commit({})
    base.close()
    memmap_baseline(d / "mm.npy", pool, w, t)
    out = {"buffer_steps": t * w, "inner": inner, "scratch_bytes": dir_bytes(d / "s"),
           "memmap_bytes": (d / "mm.npy").stat().st_size}
    out["storage_ratio"] = out["memmap_bytes"] / out["scratch_bytes"]
    os.sync()  # the writeback of what was just built would otherwise run during, and slow, the timed reads
    mm = np.load(d / "mm.npy", mmap_mode="r")

    def open_replay(batch: int, length: int, prefetch: int) -> Replay:
        # threads left at its default (the usable cores): under `cores` that is the core count measured
        cfg = ReplayConfig(capacity=10**8, prefetch=prefetch, cache_mb=1024, lazy=True,
                           inner=inner, zstd_level=level, codec=codec)
        rr = Replay(SCHEMA, w, str(d / "s"), str(d / "d"), cfg, batch=batch, length=length,
                    writer_token=f"s{prefetch}")
        rr.restore()
        rr._lazy_thread.join()  # restore work is measured elsewhere
        return rr

    for batch, length in shapes:
        res: dict = {}
        plans = None
        for prefetch in (0,) if warm_only else (0, 2):
            rr = open_replay(batch, length, prefetch)
            rr.sample()  # warm-up
            draws0 = rr.info["draws"]
            # Each batch is dropped at once, as a learner does after its step and as the memmap read below
            # is: keeping them all had every batch fault in fresh pages, 1.1-1.7x slower in a probe here.
            t0, c0 = time.perf_counter(), time.process_time()
            nbytes = sum(sum(v.nbytes for v in rr.sample().values()) for _ in range(rounds))
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            res[f"warm_prefetch{prefetch}"] = {"GBps": nbytes / dt / 1e9, "ms_per_batch": dt / rounds * 1e3,
                                               "cpu_ms_per_batch": cpu / rounds * 1e3}
            plans = [plan_batch(rr.info["seed"], draws0 + n, batch, length, w, rr.info["t"], rr.info["lo"])
                     for n in range(rounds)]
            rr.close()
            rr = open_replay(batch, length, prefetch)  # the same restored state: the same batches again
            rr.sample()
            for n, plan in enumerate(plans):  # the memmap baseline reads exactly the sampled sequences
                assert np.array_equal(rr.sample()["image"], memmap_read(mm, plan, length)), n
            rr.close()
        t0, c0 = time.perf_counter(), time.process_time()
        mb = sum(memmap_read(mm, plan, length).nbytes for plan in plans)
        dtm, cpu = time.perf_counter() - t0, time.process_time() - c0
        res["warm_memmap"] = {"GBps": mb / dtm / 1e9, "ms_per_batch": dtm / rounds * 1e3,
                              "cpu_ms_per_batch": cpu / rounds * 1e3}
        for k in ("warm_prefetch0",) if warm_only else ("warm_prefetch0", "warm_prefetch2"):
            res[k]["ratio_vs_memmap"] = res["warm_memmap"]["ms_per_batch"] / res[k]["ms_per_batch"]
        if warm_only:
            out[f"B{batch}xT{length}"] = res
            continue
        # cold: no prefetch, no cache hits, our files evicted from the page cache before each batch
        rr = open_replay(batch, length, 0)
        cold, cold_mm = 0.0, 0.0
        del mm  # a live mapping pins its pages: unmap before evicting, map afresh for each cold read
        for plan in plans:
            drop_cache(d / "s")
            rr._cache = type(rr._cache)(0, rr._pool, rr._load_inner, 1)
            rr._scratch.drop_caches()
            t0 = time.perf_counter()
            rr._gather(*plan, length)
            cold += time.perf_counter() - t0
            drop_cache(d / "mm.npy")
            t0 = time.perf_counter()
            mm = np.load(d / "mm.npy", mmap_mode="r")
            memmap_read(mm, plan, length)
            del mm
            cold_mm += time.perf_counter() - t0
        mm = np.load(d / "mm.npy", mmap_mode="r")
        rr.close()
        res["cold"] = {"ms_per_batch": cold / rounds * 1e3, "memmap_ms_per_batch": cold_mm / rounds * 1e3,
                       "ratio_vs_memmap": cold_mm / cold}
        # learner-like: prefetch decodes the next batches while the (simulated) train step runs
        rr = open_replay(batch, length, 2)
        rr.sample()
        lat = []
        for _ in range(rounds):
            time.sleep(compute_ms / 1e3)
            t0 = time.perf_counter()
            rr.sample()
            lat.append(time.perf_counter() - t0)
        rr.close()
        res["learner"] = {"compute_ms": compute_ms, "sample_call_ms": float(np.mean(lat)) * 1e3,
                          "memmap_ms_per_batch": res["warm_memmap"]["ms_per_batch"],
                          "ratio_vs_memmap": res["warm_memmap"]["ms_per_batch"] / (float(np.mean(lat)) * 1e3)}
        out[f"B{batch}xT{length}"] = res
    del mm
    shutil.rmtree(d)
    return out


def core_scaling(by_cores: dict) -> dict:
    """Warm 4x1024 sample time and ratio per core count (the buffer's threads = the cores it may use), against
    the median memmap read (one thread, so its spread across core counts is noise), and the fewest measured
    cores that reach a ratio of 0.5 (None where no measured count does: nothing is extrapolated)."""
    warm = {int(k[5:]): v["B4xT1024"] for k, v in by_cores.items()}
    ms = {n: v["warm_prefetch0"]["ms_per_batch"] for n, v in warm.items()}
    mm = float(np.median([v["warm_memmap"]["ms_per_batch"] for v in warm.values()]))
    reached = [n for n in sorted(ms) if mm / ms[n] >= 0.5]
    return {**by_cores, "ms_by_cores": ms, "memmap_ms_median": mm,
            "ratio_by_cores": {n: mm / t for n, t in ms.items()},
            "cores_for_ratio_0.5": reached[0] if reached else None, "cores_measured": sorted(ms)}


def _on_cores(n: int, fn):
    """fn() with this thread, and the threads it starts, allowed on only the first n of our cores."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(sorted(allowed)[:n]))
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, allowed)


def machine() -> dict:
    cpuinfo, meminfo = Path("/proc/cpuinfo").read_text(), Path("/proc/meminfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
               "?")
    mem = next((int(ln.split()[1]) * 1024 for ln in meminfo.splitlines() if ln.startswith("MemTotal")), 0)
    import numcodecs
    import zarr
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_bytes": mem, "python": platform.python_version(),
            "numpy": np.__version__, "zarr": zarr.__version__, "numcodecs": numcodecs.__version__,
            "platform": platform.platform()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--big", action="store_true", help="also restore at 1M steps (needs ~10 GB disk)")
    ap.add_argument("--workdir", default=None, help="scratch and durable folders (default: a temp dir)")
    ap.add_argument("--frames", choices=["mmaze", "synthetic"], default="mmaze",
                    help="what the image steps hold (mmaze: rendered here, ~1 min; synthetic if it cannot render)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "buffer.json"))
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="r2i-bench-buffer-"))
    work.mkdir(parents=True, exist_ok=True)
    q = args.quick
    res: dict = {"quick": q, "machine": machine(), "load_avg_at_start": os.getloadavg()}
    t0 = time.perf_counter()
    pool, res["frames"] = frame_pool(2048, args.frames)
    res["frames_s"] = time.perf_counter() - t0
    codec = ShardCodec(1024, 64, 1)
    res["frames_zstd1_ratio"] = pool[:1024].nbytes / (len(codec.encode(pool[:1024])) - codec.index_nbytes())
    pools = {res["frames"]: pool} | ({} if res["frames"] == "synthetic" else {"synthetic": make_frames(2048)})
    res["codecs"] = bench_codecs(pools)
    print("codecs", json.dumps(res["codecs"]), flush=True)
    du = shutil.disk_usage(work)
    res["machine"]["disk"] = {"workdir": str(work), "total_bytes": du.total, "free_bytes": du.free}
    t0 = time.perf_counter()
    res["add"] = bench_add(work, pool, 8192 if q else 65536)
    print("add", json.dumps(res["add"]), flush=True)
    shapes = [(4, 1024), (16, 64)]
    res["sample"] = bench_sample(work, pool, 16384 if q else 100_000, 5 if q else 20, 64, shapes, 100.0)
    print("sample", json.dumps(res["sample"]), flush=True)
    if not q:  # chunk layout lever: smaller inner chunks waste less decoding on short sequences
        res["sample_inner16"] = bench_sample(work, pool, 100_000, 20, 16, [(16, 64)], 100.0)
        print("sample_inner16", json.dumps(res["sample_inner16"]), flush=True)
    if not q:  # codec lever: lz4 encodes and decodes 1.6-2.1x faster than zstd-1 and stores ~1.3x more
        res["sample_lz4"] = bench_sample(work, pool, 100_000, 20, 64, shapes, 100.0, codec="lz4")
        res["add_lz4"] = bench_add(work, pool, 65536, codec="lz4")
        print("lz4", json.dumps({"sample": res["sample_lz4"], "add": res["add_lz4"]}), flush=True)
    if not q:  # cores lever: decoding is the bound, so the warm ratio should grow with the cores decoding
        res["sample_cores"] = {c: core_scaling(bench_sample(work, pool, 100_000, 20, 64, [(4, 1024)], 100.0,
                                                            codec=c, cores=(1, 2, 4, 8, 16)))
                               for c in ("zstd", "lz4")}
        print("sample_cores", json.dumps(res["sample_cores"]), flush=True)
    if not q:  # zstd level lever: negative levels encode and decode faster and store a little more
        res["zstd_levels"] = {}
        for level in (1, -1, -3):
            lv = {"add": bench_add(work, pool, 65536, level, ((1, 1), (16, 1))),
                  "sample": bench_sample(work, pool, 100_000, 20, 64, shapes, 100.0, level, warm_only=True)}
            res["zstd_levels"][str(level)] = lv
            print("zstd_level", level, json.dumps(lv), flush=True)
    res["commit"] = bench_commit(work, pool, 16384 if q else 200_000, 16384 if q else 65536, 3 if q else 5)
    print("commit", json.dumps(res["commit"]), flush=True)
    # less than a shard (1024 steps) per stream between commits: the open shard spans several commits
    res["commit_small"] = bench_commit(work, pool, 16384 if q else 200_000, 16 * 300, 8)
    print("commit_small", json.dumps(res["commit_small"]), flush=True)
    # the same, ending on whole inner chunks as the trainer's periodic commits do (Replay.at_inner_boundary):
    # 320 steps a stream from a base on a 64-step boundary
    res["commit_small_aligned"] = bench_commit(work, pool, 16384 if q else 200_704, 16 * 320, 8)
    print("commit_small_aligned", json.dumps(res["commit_small_aligned"]), flush=True)
    # the commit's metadata against the buffer's size: 10M steps are 9.8k shards of 1024 steps
    res["manifest_growth"] = bench_manifest_growth(
        work, pool, [16384, 65536] if q else [100_000, 1_000_000, 3_000_000, 10_000_000], 16 * 300, 3)
    res["restore"] = {}
    for steps in [16384] if q else ([100_000, 1_000_000] if args.big else [100_000]):
        res["restore"][str(steps)] = bench_restore(work, pool, steps)
        print("restore", steps, json.dumps(res["restore"][str(steps)]), flush=True)
    if len(res["restore"]) > 1:
        res["restore_extrapolated"] = extrapolate_restore(res["restore"])
        print("restore_extrapolated", json.dumps(res["restore_extrapolated"]), flush=True)
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg_at_end"] = os.getloadavg()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json.tmp").write_text(json.dumps(res, indent=2))
    os.replace(out.with_suffix(".json.tmp"), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
