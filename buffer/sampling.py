"""Sampling plans (pure functions of the sampler state and the window) and the decoded inner-chunk cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future

import numpy as np

from .errors import ReplayError

_MASK64 = (1 << 64) - 1


def plan_batch(seed: int, n: int, batch: int, length: int, num_streams: int, t: int, lo: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Streams (B,) and starts (B,) of batch n: uniform over the W * (t - lo - T + 1) valid (stream, start).

    Batch n uses only Philox(key=(seed, n)), so it depends on nothing but (seed, n, t, lo). The stream and
    the start offset come from separate uniforms, which keeps the stream and (nearly) the start of a planned
    sequence stable when a few steps are added before the batch is drawn: prefetch then decoded the right
    chunks, even though the batch itself is always recomputed from the actual window.
    """
    n_starts = t - lo - length + 1
    if n_starts <= 0:
        raise ReplayError(f"sample: need at least length={length} steps per stream, have {t - lo}")
    gen = np.random.Generator(np.random.Philox(key=np.array([seed & _MASK64, n], np.uint64)))
    u = gen.random((2, batch))
    ws = np.minimum((u[0] * num_streams).astype(np.int64), num_streams - 1)
    starts = lo + np.minimum((u[1] * n_starts).astype(np.int64), n_starts - 1)
    return ws, starts


class InnerCache:
    """LRU of decoded inner chunks {(stream, g): {field: (inner, *shape)}} as futures on a thread pool.

    Entries are immutable once decoded (a position's data never changes), so a hit is always correct; a
    failed decode is dropped from the cache and its error reaches whoever waits on it.
    """

    def __init__(self, max_bytes: int, pool: Executor, load: Callable[[int, int], dict[str, np.ndarray]],
                 entry_bytes: int):
        self.max_entries = max(1, max_bytes // max(1, entry_bytes))
        self._pool, self._load = pool, load
        self._lock = threading.Lock()
        self._lru: OrderedDict[tuple[int, int], Future] = OrderedDict()

    def _run(self, key: tuple[int, int], fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(self._load(*key))
        except BaseException as e:
            with self._lock:
                if self._lru.get(key) is fut:
                    del self._lru[key]
            fut.set_exception(e)

    def get(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], Future]:
        """Futures of `keys`, submitting decodes for the missing ones."""
        out, todo = {}, []
        with self._lock:
            for key in keys:
                fut = self._lru.get(key)
                if fut is None:
                    fut = Future()
                    self._lru[key] = fut
                    todo.append((key, fut))
                else:
                    self._lru.move_to_end(key)
                out[key] = fut
            while len(self._lru) > max(self.max_entries, len(out)):
                old, f = next(iter(self._lru.items()))
                if not f.done():
                    break
                del self._lru[old]
        for key, fut in todo:
            self._pool.submit(self._run, key, fut)
        return out

    def has(self, key: tuple[int, int]) -> bool:
        return key in self._lru

    def warm(self, keys: list[tuple[int, int]]) -> None:
        """Start decoding `keys` in the background (prefetch of the batches expected next)."""
        self.get(keys)
