"""Replay buffer benchmark (`make bench-buffer`): add, sample, commit and restore, with same-run baselines.

Run as `python -m bench.bench_buffer [--quick]` or `python bench/bench_buffer.py`;
writes bench/results/buffer.json.
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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python bench/bench_buffer.py`: make the project importable as installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from buffer import FieldSpec, Replay, ReplayConfig  # noqa: E402
from buffer.codec import ShardCodec  # noqa: E402
from buffer.sampling import plan_batch  # noqa: E402

SCHEMA = {
    "image": FieldSpec((64, 64, 3), "uint8"),
    "reward": FieldSpec((), "float32"),
    "action": FieldSpec((), "int32"),
    "is_first": FieldSpec((), "bool"),
    "is_last": FieldSpec((), "bool"),
    "is_terminal": FieldSpec((), "bool"),
}
STEP_BYTES = sum(s.step_bytes for s in SCHEMA.values())


def make_frames(n: int, seed: int = 0) -> np.ndarray:
    """(n, 64, 64, 3) uint8: a flat-shaded textured room seen by a moving camera, objects, and sensor-like
    noise on 15% of pixels; zstd-1 compresses it about as well as real Memory Maze frames (~3.4x)."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (256, 256, 3)).astype(np.float32)
    for _ in range(3):  # blur into blotchy wall texture
        tex = (tex + np.roll(tex, 1, 0) + np.roll(tex, 1, 1) + np.roll(tex, -1, 0) + np.roll(tex, -1, 1)) / 5
    tex = (np.clip((tex - tex.mean()) * 6 + 128, 0, 255).astype(np.uint8) // 16) * 16
    frames = np.empty((n, 64, 64, 3), np.uint8)
    x = y = 0.0
    for t in range(n):
        x, y = (x + 1.3 * np.sin(t / 37)) % 192, (y + 0.9 * np.cos(t / 23)) % 192
        f = tex[int(y):int(y) + 64, int(x):int(x) + 64].copy()
        f[40:, :] = (f[40:, :] // 2 + 60)  # floor
        for j in range(3):
            cx, cy = int(32 + 20 * np.sin(t / 11 + j * 2)), int(30 + 15 * np.cos(t / 17 + j))
            f[max(cy - 4, 0):cy + 4, max(cx - 4, 0):cx + 4] = (200, 60 * j, 255 - 80 * j)
        mask = rng.random((64, 64, 1)) < 0.15
        f = np.where(mask, f ^ rng.integers(0, 4, (64, 64, 3), dtype=np.uint8), f)
        frames[t] = f
    return frames


def render_frames(n: int, seed: int = 0) -> np.ndarray:
    """(n, 64, 64, 3) uint8 Memory Maze 9x9 frames: each action (mostly forward) held for a few steps, as a
    walking agent moves; a random policy turns in place and compresses ~1.5x better than this."""
    from agent.envs import make_env
    from agent.envs.config import EnvConfig

    env = make_env(EnvConfig(kind="mmaze", id="9x9"))
    rng = np.random.default_rng(seed)
    frames, ep, action = np.empty((n, 64, 64, 3), np.uint8), 0, 1
    obs = env.reset(seed * 1000)
    for t in range(n):
        frames[t] = obs["image"]
        if t % 8 == 0 or rng.random() < 0.1:
            action = int(rng.choice([1, 1, 1, 2, 3, 4, 5]))  # forward x3, left, right, forward+left/right
        obs, _, term, trunc = env.step(action)
        if term or trunc:
            ep += 1
            obs = env.reset(seed * 1000 + ep)
    return frames


def frame_pool(n: int, kind: str) -> tuple[np.ndarray, str]:
    """(frames, what they are): rendered Memory Maze frames unless kind="synthetic" or rendering fails."""
    if kind == "mmaze":
        try:
            return render_frames(n), "memory-maze 9x9, walking policy"
        except Exception as e:  # noqa: BLE001 - no GL backend here: say so in the JSON and go on
            print(f"Memory Maze cannot render here ({type(e).__name__}: {e}); using synthetic frames", flush=True)
    return make_frames(n), "synthetic"


def bench_codecs(pools: dict[str, np.ndarray], inner: int = 64, rounds: int = 5) -> dict:
    """Each codec on each frame set, one thread, through the buffer's own encode/decode of inner chunks:
    stored ratio, decode GB/s (best of `rounds`) and encode MB/s."""
    out: dict = {}
    for pname, pool in pools.items():
        chunks = [np.ascontiguousarray(pool[i:i + inner]) for i in range(0, len(pool) - inner + 1, inner)]
        raw = sum(c.nbytes for c in chunks)
        for cname, level in (("zstd", 1), ("zstd", -1), ("lz4", 1)):
            codec = ShardCodec(inner, inner, level, cname)
            t0 = time.perf_counter()
            encs = [codec.encode_inner(c) for c in chunks]
            enc_s = time.perf_counter() - t0
            buf, best = np.empty_like(chunks[0]), float("inf")
            for _ in range(rounds):
                t0 = time.perf_counter()
                for e in encs:
                    codec.decode_inner(e, buf, "bench")
                best = min(best, time.perf_counter() - t0)
            name = "lz4" if cname == "lz4" else f"zstd{level}"
            out.setdefault(pname, {})[name] = {"ratio": raw / sum(map(len, encs)), "decode_GBps": raw / best / 1e9,
                                               "encode_MBps": raw / enc_s / 1e6}
    return out


class StepSource:
    """Steps for W streams from a frame pool (streams offset in the pool), with 500-step episodes."""

    def __init__(self, num_streams: int, pool: np.ndarray):
        self.w, self.pool, self.i = num_streams, pool, 0
        self.offsets = (np.arange(num_streams) * 997) % len(pool)

    def next(self) -> dict[str, np.ndarray]:
        i, w = self.i, self.w
        self.i += 1
        pos = (i + np.arange(w) * 37) % 500
        return {"image": self.pool[(self.offsets + i) % len(self.pool)],
                "reward": np.full(w, i % 7, np.float32), "action": np.full(w, i % 5, np.int32),
                "is_first": pos == 0, "is_last": pos == 499, "is_terminal": np.zeros(w, bool)}


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def fill(r: Replay, src: StepSource, steps_per_stream: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps_per_stream):
        r.add(src.next())
    return time.perf_counter() - t0


def fill_cpu(r: Replay, src: StepSource, steps_per_stream: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of the adds alone; 256 distinct steps are made beforehand and cycled."""
    steps = [src.next() for _ in range(256)]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps_per_stream):
        r.add(steps[i % 256])
    return time.perf_counter() - t0, time.process_time() - c0


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


def drop_cache(root: Path) -> None:
    """Evict our own files from the page cache (fsync, POSIX_FADV_DONTNEED): cold reads without root."""
    for f in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


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


def raw_write(path: Path, chunks: list[bytes], fsync: bool) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        for c in chunks:
            fh.write(c)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return time.perf_counter() - t0


def bench_commit(work: Path, pool: np.ndarray, base_steps: int, new_steps: int, rounds: int) -> dict:
    """Commits of `new_steps` new steps (over all 16 streams) on top of `base_steps`, each followed by a raw
    sequential write (one file, one fsync) of as many bytes as the commit wrote, to the same durable folder;
    medians over `rounds` because the disk is shared.

    New data is measured as the new steps' share of the compressed store: new steps x compressed bytes per step
    of every finished shard on scratch. A commit's written bytes count everything: chunk objects, its pack
    (tails, segments, blobs) and the manifest."""
    w = 16
    d = work / "commit"
    d.mkdir(parents=True)
    cfg = ReplayConfig(capacity=10**8, threads=2)
    r = Replay(SCHEMA, w, str(d / "s"), str(d / "d"), cfg, batch=1, length=1, writer_token="b")
    src = StepSource(w, pool)
    fill(r, src, base_steps // w)
    r.commit({})
    # a raw write of n bytes writes the first n of these: compressed frames, as incompressible as the commit's
    payload = b"".join(r._scratch.read(f, s, k) for k in range(min(r.info["k_hi"], 2 * new_steps // w // 1024 + 2))
                       for s in range(w) for f in r.fields)
    out: dict = {"base_steps": base_steps, "new_steps": new_steps, "rounds": []}
    for i in range(rounds):
        fill(r, src, new_steps // w)
        t0 = time.perf_counter()
        r.commit({"x": i})
        dt = time.perf_counter() - t0
        st = dict(r.stats)
        k_hi = r.info["k_hi"]
        per_step = sum(os.path.getsize(r._scratch.file(f, s, k)) for f in r.fields for s in range(w)
                       for k in range(k_hi)) / (k_hi * cfg.chunk * w)
        new_compressed = (new_steps // w) * w * per_step
        written = st["last_commit_bytes"]
        while len(payload) < written:
            payload += payload
        dt_raw = raw_write(d / "d" / "raw.bin", [memoryview(payload)[j:min(j + 2**24, written)]
                                                 for j in range(0, written, 2**24)], fsync=True)
        os.unlink(d / "d" / "raw.bin")
        out["rounds"].append({
            "commit_s": dt, "raw_write_s": dt_raw, "ratio_vs_raw": dt_raw / dt,
            "bytes_written": written, "chunk_bytes": st["last_commit_chunk_bytes"],
            "pack_bytes": st["last_commit_pack_bytes"], "manifest_bytes": st["last_commit_manifest_bytes"],
            "new_compressed_bytes": new_compressed, "new_raw_bytes": (new_steps // w) * w * STEP_BYTES,
            "written_over_new_compressed": written / new_compressed})
    for key in ("commit_s", "raw_write_s", "ratio_vs_raw", "written_over_new_compressed"):
        out[f"median_{key}"] = float(np.median([x[key] for x in out["rounds"]]))
    out["total_written_over_new_compressed"] = (sum(x["bytes_written"] for x in out["rounds"])
                                                / sum(x["new_compressed_bytes"] for x in out["rounds"]))
    t0 = time.perf_counter()
    r.commit({"x": "empty"})
    out["empty_commit_s"] = time.perf_counter() - t0
    r.close()
    shutil.rmtree(d)
    return out


def bench_manifest_growth(work: Path, pool: np.ndarray, sizes: list[int], new_steps: int, rounds: int) -> dict:
    """Metadata a commit writes as the buffer grows: manifest and pages, and the commit's time, for commits of
    `new_steps` steps (all 16 streams) at each buffer size in `sizes`; pages of 16 shards (the default) side by
    side with every row inline in the manifest (the previous format), both buffers fed the same steps.

    A manifest's rows count shards, streams and fields, not bytes per step: the image field is cut to 4x4x3
    so that a buffer with as many shards as 10M image steps builds in minutes on this machine."""
    w = 16
    schema = dict(SCHEMA, image=FieldSpec((4, 4, 3), "uint8"))
    small = np.ascontiguousarray(pool[:, ::16, ::16])
    out: dict = {"new_steps": new_steps, "rounds": rounds, "image_shape": [4, 4, 3], "sizes": {}}
    bufs = {}
    for name, page in (("paged", 16), ("inline", 10**9)):
        d = work / f"growth-{name}"
        d.mkdir(parents=True)
        cfg = ReplayConfig(capacity=10**9, threads=2, table_page=page)
        bufs[name] = Replay(schema, w, str(d / "s"), str(d / "d"), cfg, batch=1, length=1, writer_token="b")
    srcs = {name: StepSource(w, small) for name in bufs}
    t = 0
    for size in sizes:
        row: dict = {}
        for name, r in bufs.items():
            src = srcs[name]
            for _ in range(size // w - t):
                r.add(src.next())
            r.commit({})  # the shards of the fill: not part of what is measured
            rounds_out = []
            for i in range(rounds):
                for _ in range(new_steps // w):
                    r.add(src.next())
                t0 = time.perf_counter()
                r.commit({"i": i})
                st = r.stats
                rounds_out.append({"commit_s": time.perf_counter() - t0, "bytes": st["last_commit_bytes"],
                                   "manifest_bytes": st["last_commit_manifest_bytes"],
                                   "page_bytes": st["last_commit_page_bytes"]})
            row[name] = {k: float(np.median([x[k] for x in rounds_out])) for k in rounds_out[0]}
            row[name]["max_manifest_plus_page_bytes"] = max(x["manifest_bytes"] + x["page_bytes"]
                                                            for x in rounds_out)
        t = size // w + rounds * (new_steps // w)
        row["shards"] = bufs["paged"].info["k_hi"] * w
        out["sizes"][str(size)] = row
        print("manifest_growth", size, json.dumps(row), flush=True)
    for r in bufs.values():
        r.close()
    for name in bufs:
        shutil.rmtree(work / f"growth-{name}")
    return out


def bench_restore(work: Path, pool: np.ndarray, steps: int) -> dict:
    w = 16
    d = work / f"restore-{steps}"
    d.mkdir(parents=True)
    cfg = ReplayConfig(capacity=10**8, threads=2, fsync=False)
    t_build = time.perf_counter()
    r = Replay(SCHEMA, w, str(d / "s"), str(d / "d"), cfg, batch=4, length=1024, writer_token="b")
    fill(r, StepSource(w, pool), steps // w)
    r.commit({})
    r.close()
    out = {"steps": (steps // w) * w, "durable_bytes": dir_bytes(d / "d"),
           "build_s": time.perf_counter() - t_build}
    t0 = time.perf_counter()
    shutil.copytree(d / "d", d / "copy")
    out["copy_whole_store_s"] = time.perf_counter() - t0
    shutil.rmtree(d / "copy")
    modes = [("lazy_wiped", True, True), ("full_wiped", False, True), ("full_kept", False, False)]
    for name, lazy, wipe in modes:
        if wipe:
            shutil.rmtree(d / "s", ignore_errors=True)
        t0 = time.perf_counter()
        rr = Replay(SCHEMA, w, str(d / "s"), str(d / "d"), ReplayConfig(capacity=10**8, lazy=lazy, threads=2),
                    batch=4, length=1024, writer_token=name)
        rr.restore()
        t1 = time.perf_counter()
        rr.sample()
        t2 = time.perf_counter()
        out[name] = {"restore_s": t1 - t0, "first_sample_s": t2 - t0}
        if lazy:
            rr._lazy_thread.join()
            out[name]["background_fetch_done_s"] = time.perf_counter() - t0
        rr.close()
    shutil.rmtree(d)
    return out


def extrapolate_restore(by_steps: dict, to_steps: int = 10_000_000) -> dict:
    """Each restore time (and the store's size) on a straight line through the measured buffer sizes, at
    `to_steps`: copying and full restores grow with the bytes, a lazy first sample should not."""
    xs = np.array([v["steps"] for v in by_steps.values()], float)
    paths = {"durable_bytes": ("durable_bytes",), "copy_whole_store_s": ("copy_whole_store_s",)} | {
        f"{mode}.{m}": (mode, m) for mode in ("lazy_wiped", "full_wiped", "full_kept")
        for m in ("first_sample_s", "background_fetch_done_s") if m in next(iter(by_steps.values()))[mode]}

    def at(v: dict, path: tuple[str, ...]) -> float:
        for p in path:
            v = v[p]
        return float(v)

    out: dict = {"to_steps": to_steps, "from_steps": xs.astype(int).tolist()}
    for name, path in paths.items():
        slope, icept = np.polyfit(xs, [at(v, path) for v in by_steps.values()], 1)
        out[name] = float(icept + slope * to_steps)
    return out


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
