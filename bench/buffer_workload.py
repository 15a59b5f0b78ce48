"""What the replay buffer benchmarks store and how they fill it: the image-step schema, Memory Maze frames
rendered under a walking policy (or synthetic ones with the same zstd-1 ratio where Memory Maze cannot render),
the codecs on those frames, and W streams of steps drawn from a frame pool."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from buffer import FieldSpec, Replay
from buffer.codec import ShardCodec

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


def drop_cache(root: Path) -> None:
    """Evict our own files from the page cache (fsync, POSIX_FADV_DONTNEED): cold reads without root."""
    for f in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
