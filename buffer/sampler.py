"""Batches and reads: sequences assembled from inner chunks on scratch (decoded once per batch, or copied from the
prefetch cache) and from the open shard's steps in RAM."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .errors import CorruptChunkError
from .sampling import InnerCache, plan_batch
from .state import Context, Health, Window


class Sampler:
    """Sample n draws from Philox(key=(seed, n)) only, mapped onto the window valid at the call, so a plan is a
    pure function of (seed, n, t, lo): prefetch threads precompute decoded inner chunks (immutable once
    written) for the plans expected under the current window and never hold or advance a random state."""

    def __init__(self, ctx: Context, win: Window, health: Health, tail: dict[str, np.ndarray],
                 ensure_local: Callable[[int, int], None], *, batch: int, length: int, force_first: bool):
        self.ctx, self.win, self.health, self.tail, self.ensure_local = ctx, win, health, tail, ensure_local
        self.batch, self.length, self.force_first = batch, length, force_first
        self._tls = threading.local()  # per-thread decode buffer of _fill
        self.cache = InnerCache(ctx.cfg.cache_mb * 2**20, ctx.pool, self.load_inner,
                                ctx.cfg.inner * sum(s.step_bytes for s in ctx.schema.values()))

    def sample(self) -> dict[str, np.ndarray]:
        """Next batch: each field (B, T, *spec.shape), uniform over (stream, start) in the window."""
        win, W = self.win, self.ctx.num_streams
        ws, starts = plan_batch(win.seed, win.draws, self.batch, self.length, W, win.t, win.lo)
        out = self.gather(ws, starts, self.length)
        win.draws += 1
        if self.force_first:
            out["is_first"][:, 0] = True
        for m in range(win.draws, win.draws + self.ctx.cfg.prefetch):
            pw, ps = plan_batch(win.seed, m, self.batch, self.length, W, win.t, win.lo)
            self.cache.warm(self._inner_keys(pw, ps, self.length))
        return out

    def read(self, stream: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Steps [start, stop) of one stream, each field (stop - start, *shape); must lie in the window."""
        if not (0 <= stream < self.ctx.num_streams and self.win.lo <= start <= stop <= self.win.t):
            raise ValueError(f"read: stream {stream} [{start}, {stop}) outside window "
                             f"[{self.win.lo}, {self.win.t})")
        out = self.gather(np.array([stream]), np.array([start]), stop - start)
        return {f: v[0] for f, v in out.items()}

    def _inner_keys(self, ws: np.ndarray, starts: np.ndarray, length: int) -> list[tuple[int, int]]:
        inner, done = self.ctx.codec.inner, self.win.k_hi * self.ctx.cfg.chunk
        keys = []
        for w, s in zip(ws.tolist(), starts.tolist(), strict=True):
            e = min(s + length, done)
            keys += [(w, g) for g in range(s // inner, -(-e // inner))] if e > s else []
        return keys

    def gather(self, ws: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """Assemble sequences. Each inner chunk the batch touches is decoded once: straight into the batch
        when one sequence covers it whole, else into a per-thread buffer and copied to every sequence that
        needs part of it. Chunks already in the cache (prefetched) are copied; steps of the open tail are
        copied from RAM. Decodes are spread over the caller and the pool (zstd runs without the GIL)."""
        inner, done, fields = self.ctx.codec.inner, self.win.k_hi * self.ctx.cfg.chunk, self.ctx.fields
        out = {f: np.empty((len(ws), length, *s.shape), s.dtype) for f, s in self.ctx.schema.items()}
        uses: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}  # (w, g) -> [(b, a, z, at)]
        for b, (w, s) in enumerate(zip(ws.tolist(), starts.tolist(), strict=True)):
            e, end = s + length, min(s + length, done)
            for g in range(s // inner, -(-end // inner)) if end > s else ():
                a, z = max(s - g * inner, 0), min(end - g * inner, inner)
                uses.setdefault((w, g), []).append((b, a, z, g * inner + a - s))
            if e > max(s, done):
                p = max(s, done)
                for f in fields:
                    out[f][b, p - s:] = self.tail[f][w, p - done:e - done]
        hits = self.cache.get([key for key in uses if self.cache.has(key)])
        jobs = [(key, u) for key, u in uses.items() if key not in hits]

        def copy_hits() -> None:
            for key, fut in hits.items():
                self._scatter(fut.result(), uses[key], out)

        self.ctx.parallel(lambda job: self._fill(*job, out), jobs, copy_hits)
        return out

    def _fill(self, key: tuple[int, int], uses: list[tuple[int, int, int, int]],
              out: dict[str, np.ndarray]) -> None:
        inner = self.ctx.codec.inner
        if len(uses) == 1 and uses[0][1] == 0 and uses[0][2] == inner:
            b, _, _, at = uses[0]
            self._decode_into(*key, {f: out[f][b, at:at + inner] for f in self.ctx.fields})
            return
        buf = getattr(self._tls, "buf", None)
        if buf is None:
            buf = self._tls.buf = {f: np.empty((inner, *s.shape), s.dtype) for f, s in self.ctx.schema.items()}
        self._decode_into(*key, buf)
        self._scatter(buf, uses, out)

    def _scatter(self, chunk: dict[str, np.ndarray], uses: list[tuple[int, int, int, int]],
                 out: dict[str, np.ndarray]) -> None:
        for b, a, z, at in uses:
            for f in self.ctx.fields:
                out[f][b, at:at + z - a] = chunk[f][a:z]

    def load_inner(self, w: int, g: int) -> dict[str, np.ndarray]:
        """Decoded inner chunk g (global inner index along time) of stream w, all fields."""
        out = {f: np.empty((self.ctx.codec.inner, *s.shape), s.dtype) for f, s in self.ctx.schema.items()}
        self._decode_into(w, g, out)
        return out

    def _decode_into(self, w: int, g: int, targets: dict[str, np.ndarray]) -> None:
        """Decode inner chunk g of stream w into `targets` (field -> contiguous (inner, *shape) array)."""
        k, j = divmod(g, self.ctx.codec.n_inner)
        self.ensure_local(w, k)
        sc = self.ctx.scratch
        for f, arr in targets.items():
            try:
                if sc.is_small(f):
                    arr[...] = sc.small_inner(f, w, k, j)
                else:
                    self.ctx.codec.decode_inner(sc.read_inner(f, w, k, j), arr, f"{sc.file(f, w, k)}[{j}]")
            except CorruptChunkError:
                with self.health.lock:  # refetch from durable next time rather than failing forever
                    self.win.local.pop((w, k), None)
                raise
