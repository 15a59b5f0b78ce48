"""Across-seed statistics of learning curves for `make report`: a common env-step grid, the mean over seeds and a
percentile bootstrap confidence band over seeds (numpy only, seeded, so a report is the same bytes every time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
MAX_GRID = 200  # points of a group's curve; more only slows the bootstrap without changing the figure


@dataclass(frozen=True)
class Curve:
    """One seed's (env step, value) points, x increasing."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape != self.y.shape or self.x.ndim != 1 or self.x.size == 0:
            raise ValueError(f"a curve needs equal, non-empty 1-d x and y, got {self.x.shape} and {self.y.shape}")
        if np.any(np.diff(self.x) <= 0):
            raise ValueError("a curve's env steps must increase")


@dataclass(frozen=True)
class Band:
    """A group's curve on `grid`: the mean over seeds and the bootstrap interval [lo, hi] around it."""

    grid: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    seeds: int


@dataclass(frozen=True)
class Score:
    """A group's final score: the mean over seeds of each seed's last-rows mean, with its bootstrap interval."""

    mean: float
    lo: float
    hi: float
    seeds: int


def curve(xs: list[float], ys: list[float]) -> Curve:
    """A Curve from logged points; a repeated env step keeps its last value (a row written again after a resume)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    last = np.append(x[1:] != x[:-1], True)
    return Curve(x[last], y[last])


def common_grid(curves: list[Curve], max_points: int = MAX_GRID) -> np.ndarray:
    """The env steps every seed has reached: the union of the logged steps in [latest first step, earliest last
    step] (so seeds logged at the same steps need no interpolation), thinned evenly to `max_points`. Empty when the
    seeds do not overlap."""
    lo, hi = max(c.x[0] for c in curves), min(c.x[-1] for c in curves)
    if lo > hi:
        return np.empty(0)
    steps = np.unique(np.concatenate([c.x[(c.x >= lo) & (c.x <= hi)] for c in curves]))
    if steps.size > max_points:
        steps = steps[np.round(np.linspace(0, steps.size - 1, max_points)).astype(int)]
    return steps


def on_grid(curves: list[Curve], grid: np.ndarray) -> np.ndarray:
    """(seeds, grid) values, each seed linearly interpolated between its own logged steps."""
    return np.stack([np.interp(grid, c.x, c.y) for c in curves])


def bootstrap_mean(values: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0 (seeds) of `values` (seeds, ...): seeds are drawn
    with replacement `n_boot` times; the same `seed` gives the same interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    return np.quantile(means, alpha, axis=0), np.quantile(means, 1.0 - alpha, axis=0)


def band(curves: list[Curve], seed: int = 0) -> Band | None:
    """The mean and bootstrap band of seeds' curves on their common grid; None when they share no env steps."""
    grid = common_grid(curves)
    if grid.size == 0:
        return None
    values = on_grid(curves, grid)
    lo, hi = bootstrap_mean(values, seed=seed)
    return Band(grid, values.mean(axis=0), lo, hi, len(curves))


def final_score(curves: list[Curve], last: int, seed: int = 0) -> Score:
    """Each seed's mean over its `last` rows, then their mean over seeds and its bootstrap interval."""
    if last < 1:
        raise ValueError(f"last={last} rows must be >= 1")
    finals = np.array([c.y[-last:].mean() for c in curves])
    lo, hi = bootstrap_mean(finals, seed=seed)
    return Score(float(finals.mean()), float(lo), float(hi), len(curves))
