"""`make report SWEEP=...`: a sweep's runs grouped by config (runs that differ only by seed), learning curves
averaged across seeds with a bootstrap band, and a final-score table, as PNGs and `report.html` in the sweep folder.

Everything comes from the run folders' files (`config.yaml`, `logs/metrics.jsonl`), so a report can be made while
the runs train, on any machine that sees the sweep folder.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from orchestrator import aggregate
from orchestrator.aggregate import Band, Curve, Score
from orchestrator.config import OrchestratorError
from orchestrator.sweep import Sweep

# Metric families in the order the report shows them; a family's figure has one panel per metric that was logged.
FAMILIES: dict[str, tuple[str, ...]] = {"eval": ("eval/return", "eval/success"),
                                        "train": ("episode/return", "episode/success")}
METRICS = tuple(m for ms in FAMILIES.values() for m in ms)
LAST_ROWS = 5
# On window load each image records its pixel width (0: it did not load) and a broken one is named on the page.
IMG_CHECK = ("<script>window.addEventListener('load', () => { for (const img of document.images) {"
             " img.dataset.naturalWidth = img.naturalWidth; if (!img.naturalWidth) img.insertAdjacentText("
             "'afterend', ' (missing: ' + img.getAttribute('src') + ')'); } document.body.dataset.loaded = '1'; });"
             "</script>")


class ReportError(OrchestratorError):
    """A run folder the report cannot read."""


@dataclass(frozen=True)
class RunSeries:
    """One run: its seed, its config without the seed (flattened), and its logged curves per metric."""

    run: str
    seed: int
    config: dict[str, str]
    curves: dict[str, Curve]


@dataclass(frozen=True)
class Group:
    """Runs whose configs differ only by seed, named by the exp and the settings that set it apart."""

    name: str
    runs: tuple[RunSeries, ...]

    def curves(self, metric: str) -> list[Curve]:
        return [r.curves[metric] for r in self.runs if metric in r.curves]


@dataclass(frozen=True)
class Row:
    """The final-score table's row of a group."""

    group: str
    runs: int
    seeds: tuple[int, ...]  # the seeds with rows of the main metric
    env_steps: int | None  # the smallest last env step among those seeds: what the final score covers
    score: Score | None
    success: Score | None


def _flatten(tree: object, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree, sort_keys=True)}


def read_curves(path: Path) -> dict[str, Curve]:
    """The report's metrics in a metrics.jsonl, each as (env_steps, value) points; rows carry any subset of them."""
    points: dict[str, tuple[list[float], list[float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            x = row.get("env_steps")
            for m in METRICS:
                if x is not None and row.get(m) is not None:
                    points.setdefault(m, ([], []))
                    points[m][0].append(float(x))
                    points[m][1].append(float(row[m]))
    return {m: aggregate.curve(xs, ys) for m, (xs, ys) in points.items()}


def read_run(sweep: Sweep, run: str) -> RunSeries:
    path = sweep.dir / run / "config.yaml"
    try:
        tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, yaml.YAMLError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ReportError(f"run {run!r} of sweep {sweep.name!r}: cannot read {path}: {first}") from e
    if not isinstance(tree, dict) or not isinstance(tree.get("seed"), int):
        raise ReportError(f"run {run!r} of sweep {sweep.name!r}: {path} has no integer top-level seed")
    seed = tree.pop("seed")
    return RunSeries(run, seed, _flatten(tree), read_curves(sweep.dir / run / "logs" / "metrics.jsonl"))


def group_runs(runs: list[RunSeries]) -> list[Group]:
    """Groups in the order of their first run, each named `<exp> key=value ...` by the config keys whose values
    differ between groups (just `<exp>` when all runs share one config)."""
    by_config: dict[str, list[RunSeries]] = {}
    for r in runs:
        by_config.setdefault(json.dumps(r.config, sort_keys=True), []).append(r)
    configs = [members[0].config for members in by_config.values()]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    names = []
    for cfg in configs:
        exp = json.loads(cfg.get("run.exp", '""')) or "run"
        names.append(" ".join([exp, *(f"{k}={_value(cfg.get(k))}" for k in varying if k != "run.exp")]))
    if len(set(names)) < len(names):  # values that print alike (1 and "1"): the table must still tell them apart
        names = [f"{n} #{i}" for i, n in enumerate(names)]
    return [Group(n, tuple(members)) for n, members in zip(names, by_config.values(), strict=True)]


def _value(encoded: str | None) -> str:
    if encoded is None:
        return "unset"
    v = json.loads(encoded)
    return v if isinstance(v, str) else json.dumps(v)


def main_metrics(groups: list[Group]) -> tuple[str, str | None]:
    """The metric the final score ranks by (evaluation when any run logged it, else training episodes), and the
    same family's success metric when logged."""
    logged = {m for g in groups for r in g.runs for m in r.curves}
    family = "eval" if "eval/return" in logged else "train"
    ret, success = FAMILIES[family]
    return ret, (success if success in logged else None)


def score_rows(groups: list[Group], last: int) -> list[Row]:
    ret, success = main_metrics(groups)
    rows = []
    for g in groups:
        with_rows = [r for r in g.runs if ret in r.curves]
        curves = [r.curves[ret] for r in with_rows]
        succ = g.curves(success) if success else []
        rows.append(Row(
            g.name, len(g.runs), tuple(r.seed for r in with_rows),
            int(min(c.x[-1] for c in curves)) if curves else None,
            aggregate.final_score(curves, last) if curves else None,
            aggregate.final_score(succ, last) if succ else None))
    return rows


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote and the table it shows."""

    page: Path
    images: tuple[Path, ...]
    rows: tuple[Row, ...]
    metric: str  # the final score's metric
    success: str | None  # the same family's success metric, when logged


def figure(groups: list[Group], metrics: tuple[str, ...], title: str, out: Path) -> Path:
    """One panel per metric: per group its seeds faint, their mean and its bootstrap band; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = [(i, g) for i, g in enumerate(groups) if any(g.curves(m) for m in metrics)]
    legend_rows = -(-len(shown) // 3)
    height = 3.6 + 0.25 * legend_rows  # inches; the legend sits under the panels, 3 groups a line
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), height), dpi=100, squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, g in shown:
            color, curves = colors[i % len(colors)], g.curves(metric)
            for c in curves:
                ax.plot(c.x, c.y, color=color, lw=0.8, alpha=0.25)
            b: Band | None = aggregate.band(curves) if curves else None
            if b is not None:
                ax.fill_between(b.grid, b.lo, b.hi, color=color, alpha=0.2, lw=0)
                sparse = b.grid.size <= 30  # e.g. evaluations far apart: mark the measured steps
                ax.plot(b.grid, b.mean, color=color, lw=2, marker="o" if sparse else None, ms=3)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("env steps", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2) for i, _ in shown]
    labels = [f"{g.name} ({max(len(g.curves(m)) for m in metrics)} seeds)" for _, g in shown]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.25 * legend_rows / height, 1, 1))
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out


def _score(s: Score | None) -> str:
    return "-" if s is None else f"{s.mean:.3g} [{s.lo:.3g}, {s.hi:.3g}]"


def write_report(sweep: Sweep, last: int = LAST_ROWS) -> Report:
    """`<sweep>/report_<family>.png` per metric family logged and `<sweep>/report.html`."""
    if last < 1:
        raise ReportError(f"--last {last}: the final score needs at least 1 row per seed")
    groups = group_runs([read_run(sweep, r) for r in sweep.runs])
    logged = {m for g in groups for r in g.runs for m in r.curves}
    images = []
    for family, metrics in FAMILIES.items():
        present = tuple(m for m in metrics if m in logged)
        if present:
            title = f"sweep {sweep.name}: {'evaluation' if family == 'eval' else 'training episodes'}"
            images.append(figure(groups, present, title, sweep.dir / f"report_{family}.png"))
    ret, success = main_metrics(groups)
    rows = score_rows(groups, last)
    out = sweep.dir / "report.html"
    out.write_text(page(sweep.name, rows, [p.name for p in images], ret, success, last))
    return Report(out, tuple(images), tuple(rows), ret, success)


def rich_table(sweep_name: str, rep: Report) -> Any:
    """The final-score table for the terminal."""
    from rich.table import Table

    t = Table(title=f"sweep {sweep_name}: final {rep.metric} per group", title_justify="left")
    for col in ("group", "runs", "seeds", "env steps", f"final {rep.metric}") + (
            (f"final {rep.success}",) if rep.success else ()):
        t.add_column(col, justify="left" if col == "group" else "right")
    for r in rep.rows:
        t.add_row(*_cells(r, rep.success))
    return t


def _cells(r: Row, success: str | None) -> list[str]:
    return [r.group, str(r.runs), ", ".join(map(str, r.seeds)) or "-", "-" if r.env_steps is None else str(r.env_steps),
            _score(r.score)] + ([_score(r.success)] if success else [])


def page(sweep_name: str, rows: list[Row], images: list[str], ret: str, success: str | None, last: int) -> str:
    e = html.escape
    head = ["group", "runs", "seeds", "env steps", f"final {ret}"] + ([f"final {success}"] if success else [])
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in _cells(r, success)) + "</tr>" for r in rows)
    imgs = "".join(f'<p><img src="{e(name)}" alt="{e(name)}"></p>' for name in images) or \
        "<p>no episodes or evaluations logged yet</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>report {e(sweep_name)}</title>"
            "<style>body{font-family:sans-serif;margin:16px} table{border-collapse:collapse} "
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px} td:nth-child(n+2){text-align:right}"
            " .note{color:#555;font-size:13px;max-width:60em}</style></head><body>"
            f"<h2>sweep {e(sweep_name)}</h2><p class='note'>{e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}. "
            f"Runs that differ only by seed form a group. Final: each seed's mean over its last {last} rows, "
            f"averaged over seeds, with a {aggregate.LEVEL:.0%} bootstrap interval over seeds "
            f"({aggregate.N_BOOT} resamples); curves: the mean over seeds on the env steps all seeds reached, "
            "the same interval as a band, each seed faint. <a href='status.html'>status</a></p>"
            f"<table id='final'><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{body}</tbody></table>{imgs}{IMG_CHECK}</body></html>")
