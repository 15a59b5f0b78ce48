"""The open shard: steps added to RAM, its full inner chunks encoded ahead in the pool, written to scratch as a
finished shard when full; and FIFO eviction of the oldest shards."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from .codec import checksum
from .errors import SchemaError, ScratchError
from .manifest import ShardInfo, object_ids
from .state import Context, Health, Window


class Tail:
    def __init__(self, ctx: Context, win: Window, health: Health):
        self.ctx, self.win, self.health = ctx, win, health
        W, chunk = ctx.num_streams, ctx.cfg.chunk
        # field -> (W, chunk, *shape): steps [k_hi * chunk, t) of every stream
        self.arrays = {f: np.zeros((W, chunk, *s.shape), s.dtype) for f, s in ctx.schema.items()}
        self._slots = [(f, np.dtype(s.dtype), (W, *s.shape), self.arrays[f]) for f, s in ctx.schema.items()]
        self.inner_enc: dict[int, tuple[int, list[Future]]] = {}  # j -> (shard, per-stream encode jobs)

    def add(self, step: dict[str, np.ndarray]) -> None:
        """Append one step of every stream: each value (W, *spec.shape) of exactly spec.dtype."""
        win, inner = self.win, self.ctx.codec.inner
        if step.keys() != self.ctx.schema.keys():
            raise SchemaError(f"add: keys {sorted(step)} differ from schema keys {self.ctx.fields}")
        i = win.t - win.k_hi * self.ctx.cfg.chunk
        # One pass: a rejected step may leave values in slot i, which is not part of the buffer until t moves.
        for f, dtype, shape, tail in self._slots:
            v = step[f]
            if not isinstance(v, np.ndarray):
                v = np.asarray(v)
            if v.dtype != dtype or v.shape != shape:
                raise SchemaError(f"add: field {f!r} is {v.dtype}{list(v.shape)}, schema wants "
                                  f"{dtype}{list(shape)}")
            tail[:, i] = v
        win.t += 1
        if (i + 1) % inner == 0:
            self.inner_enc[i // inner] = self._encode_inner(i // inner)
        if i + 1 == self.ctx.cfg.chunk:
            self._finish_shard()

    def _encode_inner(self, j: int) -> tuple[int, list[Future]]:
        """Start encoding inner chunk j of the open shard, every stream and field, in the pool: by the time
        the shard is full only its last inner chunk is left to encode, so add() rarely waits for zstd and a
        second core encodes while the caller adds. Rows of a finished inner chunk do not change until the
        shard is written (_finish_shard waits for these jobs before the tail is reused)."""
        codec, inner, k = self.ctx.codec, self.ctx.codec.inner, self.win.k_hi

        def encode(w: int) -> list[bytes]:
            return [codec.encode_inner(self.arrays[f][w, j * inner:(j + 1) * inner]) for f in self.ctx.fields]

        return k, [self.ctx.pool.submit(encode, w) for w in range(self.ctx.num_streams)]

    def encoded(self, n: int) -> dict[int, list]:
        """Per stream, the encode jobs of the first n // inner (full) inner chunks of the tail, started for those
        not started yet: after a restore these were never encoded, and the shard reuses them."""
        m = n // self.ctx.codec.inner
        for j in range(m):
            if self.inner_enc.get(j, (None,))[0] != self.win.k_hi:
                self.inner_enc[j] = self._encode_inner(j)
        return {w: [self.inner_enc[j][1][w] for j in range(m)] for w in range(self.ctx.num_streams)}

    def _finish_shard(self) -> None:
        ctx, win, health = self.ctx, self.win, self.health
        k, W, n_inner, fields = win.k_hi, ctx.num_streams, ctx.codec.n_inner, ctx.fields
        pending, self.inner_enc = self.inner_enc, {}
        # after a restore, the inner chunks the restored tail already filled were never encoded
        pending = {j: pending[j] if pending.get(j, (None,))[0] == k else self._encode_inner(j)
                   for j in range(n_inner)}
        try:  # wait here, not in pool jobs: a job waiting on jobs queued behind it would deadlock the pool
            enc = [[fut.result() for fut in pending[j][1]] for j in range(n_inner)]
        except BaseException as e:
            health.broken = f"encoding shard {k} failed: {e!r}"
            raise

        def write(w: int, fi: int) -> tuple[int, int]:
            data = ctx.codec.assemble([enc[j][w][fi] for j in range(n_inner)])
            ctx.scratch.write(fields[fi], w, k, data)
            return len(data), checksum(data)

        jobs = {(w, fi): ctx.pool.submit(write, w, fi) for w in range(W) for fi in range(len(fields))}
        size, crc = np.zeros((W, len(fields)), np.uint32), np.zeros((W, len(fields)), np.uint32)
        try:
            for (w, j), fut in jobs.items():
                size[w, j], crc[w, j] = fut.result()
        except ScratchError as e:
            for fut in jobs.values():
                fut.cancel()
            health.broken = str(e)
            raise
        obj = object_ids(crc)
        with health.lock:
            win.shards[k] = ShardInfo(size, crc, obj)
            for w in range(W):
                win.local[(w, k)] = True
        win.k_hi = k + 1

    def evict(self, cap_per_stream: int, commit_idle: Callable[[], bool]) -> None:
        """Move the window's start to keep `cap_per_stream` steps; scratch files of shards that leave it are
        deleted once no commit is running (a running one may still upload them)."""
        win, health = self.win, self.health
        win.lo = max(0, win.t - cap_per_stream)
        k_new = win.lo // self.ctx.cfg.chunk
        while win.k_lo < k_new:
            k = win.k_lo
            with health.lock:
                win.shards.pop(k, None)
                for w in range(self.ctx.num_streams):
                    win.local.pop((w, k), None)
                win.k_lo = k + 1
            win.pending_delete.append(k)
        if win.pending_delete and commit_idle():
            for k in win.pending_delete:
                self.ctx.scratch.delete_shard(k, range(self.ctx.num_streams))
            win.pending_delete.clear()
