"""`make report`: a real 2-seed smoke sweep of the agent and a sweep of 2 config groups x 2 seeds whose metrics the
real writer logged; the page checked in headless Chromium (it loads, every image loads, one table row per group)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.metrics import MetricsLog
from agent.run_config import WandbConfig
from orchestrator import aggregate
from orchestrator.compose import compose_runs
from orchestrator.config import REPO_ROOT, schema
from orchestrator.report import RunSeries, group_runs, read_run, write_report
from orchestrator.status import run_status, write_html
from orchestrator.sweep import Request, create_sweep, open_sweep
from tests.orchestrator.report_browser import render, screenshot

CLI = [sys.executable, "-m", "orchestrator"]
# Two short evaluations per run where the config tree has periodic evaluation, so the report shows eval curves.
EVALUATES = "eval" in schema()
EVAL_ARGS = " eval.every=150 eval.episodes=2" if EVALUATES else ""


def cli(*args: str, root) -> subprocess.CompletedProcess:
    """The real CLI with stdout a pipe, as in `make report | tee`."""
    return subprocess.run(CLI + ["--root", str(root), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke experiment with 2 seeds, trained by the real agent through the local executor (~1 min)."""
    root = tmp_path_factory.mktemp("runs")
    out = cli("submit", "--exp", "smoke", "--seeds", "0,1", "--sweep", "smoke2", "--cluster", "local", "--args",
              f"train.steps=300 train.prefill=100 train.log_every=25 train.env_processes=false "
              f"wandb.mode=disabled run.root={root}{EVAL_ARGS}", root=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # piped, the live table's last frame keeps its headers whole
    assert "┃ run ┃ state ┃ requeues ┃ progress" in out.stdout, out.stdout
    return root


def test_smoke_sweep_report_in_a_browser(smoke, tmp_path):
    sweep_dir = smoke / "smoke2"
    out = cli("report", "--sweep", "smoke2", root=smoke)
    assert out.returncode == 0, out.stderr
    # piped, the final-score table keeps its headers whole
    main = "eval/return" if EVALUATES else "episode/return"
    header = next(line for line in out.stdout.splitlines() if line.startswith("┃ group"))
    assert [c.strip() for c in header.strip("┃").split("┃")][:5] == [
        "group", "runs", "seeds", "env steps", f"final {main}"], out.stdout
    runs = [json.loads(line) for r in ("s0", "s1")
            for line in (sweep_dir / r / "logs" / "metrics.jsonl").read_text().splitlines()]
    evaluated = any("eval/return" in row for row in runs)
    assert evaluated == EVALUATES
    assert (sweep_dir / "report_train.png").exists()
    assert (sweep_dir / "report_eval.png").exists() == evaluated
    dom = render(sweep_dir / "report.html", tmp_path / "chromium")
    assert dom.body.get("data-loaded") == "1", dom.body
    assert len(dom.images) == 1 + evaluated
    assert all(int(img["data-natural-width"]) > 0 for img in dom.images), dom.images
    assert dom.table_rows == {"final": 1}
    assert "missing:" not in "".join(dom.text)
    # both seeds made one group, named by its experiment, and its curve has a band of nonzero width somewhere
    (group,) = group_runs([read_run(open_sweep(smoke, "smoke2"), r) for r in ("s0", "s1")])
    assert group.name == "smoke" and [r.seed for r in group.runs] == [0, 1]
    band = aggregate.band(group.curves("eval/return" if evaluated else "episode/return"))
    assert band.seeds == 2 and band.grid.size >= 2
    assert all(band.lo <= band.mean) and all(band.mean <= band.hi) and any(band.hi > band.lo)
    screenshot(sweep_dir / "report.html", tmp_path / "chromium", tmp_path / "report.png")


STEPS = range(10, 201, 10)
EVAL_STEPS = (50, 100, 150, 200)


def eval_return(group: int, seed: int) -> float:
    return 10.0 * group + seed


@pytest.fixture
def logged(tmp_path):
    """2 config groups (env.memory_length 5, 9) x 2 seeds; train rows every 10 env steps and eval rows every 50,
    written by the training loop's MetricsLog."""
    root = tmp_path / "runs"
    runs = compose_runs("smoke", [0, 1], f"env.memory_length=5,9 run.root={root}", "local")
    sweep = create_sweep(root, "grid", Request("smoke", [0, 1], [], "local"), runs)
    for spec in runs:
        g, s = (0 if spec.cfg.env.memory_length == 5 else 1), spec.cfg.seed
        log = MetricsLog(sweep.dir / spec.name / "logs", WandbConfig(mode="disabled"), spec.name)
        log.open(committed_bytes=0)
        for t in STEPS:
            log.write({"env_steps": t, "episode/return": t / 100 + g + 0.1 * s, "episode/success": float(s),
                       "episode/length": 6.0}, {})
            if t in EVAL_STEPS:
                log.write({"env_steps": t, "eval/return": eval_return(g, s), "eval/success": 1.0 - s,
                           "eval/length": 6.0}, {})
        log.close()
    return sweep


def test_groups_final_scores_and_figures_from_logged_metrics(logged, tmp_path):
    before = write_html(logged, [run_status(logged, r, {}, {}) for r in logged.runs]).read_text()
    assert "no sweep report yet: <code>make report SWEEP=grid</code>" in before and "report.html'>" not in before
    made = write_report(logged, last=3)
    assert (made.metric, made.success) == ("eval/return", "eval/success")  # evaluation preferred when logged
    assert [p.name for p in made.images] == ["report_eval.png", "report_train.png"]
    names = [r.group for r in made.rows]
    assert names == ["smoke env.memory_length=5", "smoke env.memory_length=9"]
    for g, row in enumerate(made.rows):
        assert (row.runs, row.seeds, row.env_steps) == (2, (0, 1), 200)
        # each seed's eval return is constant, so its last-3 mean is that constant; 2 seeds: the bootstrap
        # interval spans them (drawing the same seed twice is far likelier than 2.5%)
        s = row.score
        assert (s.mean, s.lo, s.hi, s.seeds) == (eval_return(g, 0.5), eval_return(g, 0), eval_return(g, 1), 2)
        assert (row.success.mean, row.success.lo, row.success.hi) == (0.5, 0.0, 1.0)
    # a figure is the same bytes when made again (the bootstrap is seeded, the PNG carries no version or date)
    first = [p.read_bytes() for p in made.images]
    assert [p.read_bytes() for p in write_report(logged, last=3).images] == first

    dom = render(made.page, tmp_path / "chromium")
    assert dom.body.get("data-loaded") == "1"
    assert [img["src"] for img in dom.images] == ["report_eval.png", "report_train.png"]
    assert all(int(img["data-natural-width"]) > 0 for img in dom.images), dom.images
    assert dom.table_rows == {"final": 2} and "status.html" in dom.links
    text = " ".join(dom.text)
    assert "smoke env.memory_length=5" in text and "10.5 [10, 11]" in text

    after = write_html(logged, [run_status(logged, r, {}, {}) for r in logged.runs])
    status_dom = render(after, tmp_path / "chromium")
    assert "report.html" in status_dom.links


def test_a_missing_image_is_named_on_the_page(logged, tmp_path):
    made = write_report(logged)
    made.images[0].unlink()
    dom = render(made.page, tmp_path / "chromium")
    assert [img["data-natural-width"] for img in dom.images] == ["0", "1040"]  # 2 panels of 520 px
    assert "(missing: report_eval.png)" in "".join(dom.text)


def test_bad_input_is_one_clear_line(logged):
    out = cli("report", "--sweep", "nope", root=logged.dir.parent)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"error: no sweep 'nope' under {logged.dir.parent}; sweeps: grid")
    out = cli("report", "--sweep", "grid", "--last", "0", root=logged.dir.parent)
    assert out.returncode == 2 and "--last 0" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    run = logged.runs[1]
    (logged.dir / run / "config.yaml").write_text("seed: [1\n")
    out = cli("report", "--sweep", "grid", root=logged.dir.parent)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"error: run '{run}' of sweep 'grid': cannot read {logged.dir / run / 'config.yaml'}")


def test_runs_without_rows_yet_keep_their_group_row(logged):
    """A sweep still starting: a seed with no rows is left out of its group's score, a group with none has '-'."""
    first, second = (logged.dir / r / "logs" / "metrics.jsonl" for r in logged.runs[:2])  # group 5, seeds 0 and 1
    second.unlink()
    made = write_report(logged, last=3)
    assert [(r.runs, r.seeds) for r in made.rows] == [(2, (0,)), (2, (0, 1))]
    s = made.rows[0].score
    assert (s.mean, s.lo, s.hi, s.seeds) == (0.0, 0.0, 0.0, 1)
    first.unlink()
    for run in logged.runs[2:]:
        (logged.dir / run / "logs" / "metrics.jsonl").unlink()
    made = write_report(logged)
    assert made.images == () and [(r.seeds, r.env_steps, r.score) for r in made.rows] == [((), None, None)] * 2
    page = made.page.read_text()
    assert "no episodes or evaluations logged yet" in page and page.count("<td>-</td>") == 2 * 3


def test_groups_are_named_by_the_settings_that_differ():
    def run(name, seed, **cfg):
        flat = {"run.exp": '"tmaze"', "train.steps": "1000", **{k.replace("__", "."): v for k, v in cfg.items()}}
        return RunSeries(name, seed, flat, {})

    runs = [run("a0", 0, agent__lr="0.001", env__len="20"), run("b0", 0, agent__lr="0.0003", env__len="20"),
            run("a1", 1, agent__lr="0.001", env__len="20"), run("c0", 0, agent__lr="0.001", env__len="50")]
    groups = group_runs(runs)
    assert [(g.name, [r.run for r in g.runs]) for g in groups] == [
        ("tmaze agent.lr=0.001 env.len=20", ["a0", "a1"]), ("tmaze agent.lr=0.0003 env.len=20", ["b0"]),
        ("tmaze agent.lr=0.001 env.len=50", ["c0"])]
    alike = group_runs([run("x", 0, k='"1"'), run("y", 0, k="1"), run("z", 0)])
    assert [g.name for g in alike] == ["tmaze k=1 #0", "tmaze k=1 #1", "tmaze k=unset #2"]
