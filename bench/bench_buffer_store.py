"""The replay buffer benchmark's durable-store parts: commits against a plain write of as many bytes, the commit's
metadata against the buffer's size, and restore (lazy and full) from a wiped scratch."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.buffer_workload import SCHEMA, STEP_BYTES, StepSource, dir_bytes, fill
from buffer import FieldSpec, Replay, ReplayConfig


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
