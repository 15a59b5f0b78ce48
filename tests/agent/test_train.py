"""The training loop end to end on CPU: exact resume, in a new process, against an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from agent.config import agent_config_from
from agent.envs import EnvConfig
from agent.run_config import AgentRunConfig, EvalConfig, TrainConfig, WandbConfig
from agent.train import RunContext, train, updates_due
from buffer import Replay, ReplayConfig

REPO = Path(__file__).resolve().parents[2]
ENVS = {
    "tmaze": EnvConfig(kind="tmaze", id="passive", memory_length=6),
    "popgym": EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0"),
}


def make_cfg(env: str, steps: int = 96, evaluate: bool = False, **train_kw) -> AgentRunConfig:
    """A run small enough for 2 CPU cores: tiny widths, 2 in-process envs, 8 updates; `evaluate`: 3 eval
    episodes on 2 envs every 32 env steps (at 32, 64, 96)."""
    agent = agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / "tiny.yaml"))
    kw = dict(steps=steps, num_envs=2, env_processes=False, train_ratio=32, batch=2, length=8, prefill=32,
              commit_every_min=60.0, log_every=16)
    kw.update(train_kw)
    return AgentRunConfig(seed=3, agent=agent, env=ENVS[env], train=TrainConfig(**kw),
                          replay=ReplayConfig(capacity=4096, chunk=16, inner=8, prefetch=1, threads=1, fsync=False),
                          wandb=WandbConfig(mode="disabled"),
                          eval=EvalConfig(every=32 if evaluate else 0, episodes=3, envs=2))


def make_ctx(root: Path, stop_after: int | None = None, token: str = "t0", events: list | None = None) -> RunContext:
    """`events`: a list the loop's events are appended to."""
    root.mkdir(parents=True, exist_ok=True)
    calls = iter(range(10**9))
    return RunContext(scratch_dir=str(root / "scratch"), durable_url=str(root / "durable"),
                      log_dir=str(root / "logs"), writer_token=token,
                      should_stop=lambda: stop_after is not None and next(calls) >= stop_after,
                      on_event=None if events is None else events.append)


def final_state(root: Path, cfg: AgentRunConfig) -> dict:
    """Everything a finished run leaves: agent blobs, loop counters, metrics rows and the whole replay."""
    from agent.train import step_schema

    with Replay(step_schema(_obs_spec(cfg)), cfg.train.num_envs, str(root / "check-scratch"), str(root / "durable"),
                cfg.replay, batch=cfg.train.batch, length=cfg.train.length, writer_token="reader") as r:
        restored = r.restore()
        info = r.info
        data = [r.read(w, info["lo"], info["t"]) for w in range(cfg.train.num_envs)]
    loop = {k: v for k, v in restored.extra["loop"].items() if k != "wall_time_s"}
    return {"blobs": restored.blobs, "loop": loop, "info": {k: info[k] for k in ("t", "lo", "draws")},
            "data": data, "metrics": (root / "logs" / "metrics.jsonl").read_bytes()}


def _obs_spec(cfg: AgentRunConfig) -> dict:
    from agent.envs import make_env

    env = make_env(cfg.env)
    try:
        return env.obs_spec()
    finally:
        env.close()


def assert_same(a: dict, b: dict, metrics: bool = True) -> None:
    assert a["blobs"].keys() == b["blobs"].keys()
    for k in a["blobs"]:
        assert a["blobs"][k] == b["blobs"][k], f"blob {k} differs"
    if metrics:
        assert a["metrics"] == b["metrics"]
        assert a["loop"] == b["loop"]
    else:  # all but the size of metrics.jsonl
        assert {**a["loop"], "metrics_bytes": 0} == {**b["loop"], "metrics_bytes": 0}
    assert a["info"] == b["info"]
    for da, db in zip(a["data"], b["data"], strict=True):
        for f in da:
            np.testing.assert_array_equal(da[f], db[f], err_msg=f)


def test_updates_follow_the_train_ratio() -> None:
    cfg = make_cfg("tmaze")  # 32 replayed steps per env step, 16 per batch, prefill 32
    assert [updates_due(s, cfg) for s in (0, 32, 33, 34, 96)] == [0, 0, 2, 4, 128]
    assert updates_due(96, replace(cfg, train=replace(cfg.train, train_ratio=1))) == 4


@pytest.fixture(scope="module")
def tmaze_eval_run(tmp_path_factory) -> tuple[Path, AgentRunConfig, dict]:
    """A straight T-Maze run with evaluation on, shared by the tests that compare against it: (run folder,
    config, final state). The folder is laid out as a run folder (config.yaml, logs/, durable/) for `make eval`."""
    from orchestrator.config import RootConfig, to_yaml

    root = tmp_path_factory.mktemp("tmaze-eval") / "run"
    cfg = make_cfg("tmaze", evaluate=True)
    assert train(cfg, make_ctx(root)) == "done"
    (root / "config.yaml").write_text(to_yaml(RootConfig(**vars(cfg))))
    return root, cfg, final_state(root, cfg)


# With evaluation on (T-Maze: at 32, 64, 96, the stop falls between the first two), and with a policy lag: the
# updates then run while the envs step, the policy acts with older params, and the commit must carry those.
@pytest.mark.parametrize("env, train_kw", [("tmaze", {}), ("popgym", {}), ("tmaze", {"policy_lag": 2}),
                                           ("popgym", {"policy_lag": 1, "env_processes": True})])
def test_stop_and_resume_in_a_new_process_is_bit_identical(tmp_path: Path, env: str, train_kw: dict,
                                                            request) -> None:
    evaluate = env == "tmaze" and not train_kw
    cfg = make_cfg(env, evaluate=evaluate, **train_kw)
    if evaluate:
        reference = request.getfixturevalue("tmaze_eval_run")[2]
    else:
        assert train(cfg, make_ctx(tmp_path / "straight")) == "done"
        reference = final_state(tmp_path / "straight", cfg)
    assert reference["loop"]["env_steps"] == 96 and reference["loop"]["updates"] == updates_due(96, cfg)
    assert reference["metrics"].count(b"\n") == 96 // 16 + (3 if evaluate else 0)
    assert ("policy_params" in reference["blobs"]) == bool(cfg.train.policy_lag)

    # Stop mid-episode (iteration 23: T-Maze episodes last 7 steps), then finish in a fresh interpreter.
    root = tmp_path / "interrupted"
    assert train(cfg, make_ctx(root, stop_after=23)) == "stopped"
    code = ("import sys; from tests.agent.test_train import make_cfg, make_ctx, train; from pathlib import Path; "
            f"cfg = make_cfg({env!r}, evaluate={evaluate}, **{train_kw!r}); "
            f"sys.exit(0 if train(cfg, make_ctx(Path({str(root)!r}), token='t1')) == 'done' else 1)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=600)
    assert_same(final_state(root, cfg), reference)


def test_a_policy_lag_acts_with_older_params(tmp_path: Path) -> None:
    """Lag 0 and a lag act alike before the first update and with other params after it (the policy's recurrent
    state shows it; near-uniform tiny policies may still sample the same actions)."""
    runs = {}
    for lag in (0, 1):
        cfg = make_cfg("tmaze", steps=40, policy_lag=lag)
        assert train(cfg, make_ctx(tmp_path / str(lag))) == "done"
        runs[lag] = final_state(tmp_path / str(lag), cfg)
    first = 32 // 2 + 1  # prefill 32 over 2 envs: the first update comes after step 17 of each stream
    for w in range(2):
        np.testing.assert_array_equal(runs[0]["data"][w]["action"][:first], runs[1]["data"][w]["action"][:first])
    assert runs[0]["blobs"]["policy_carry"] != runs[1]["blobs"]["policy_carry"]
    assert runs[0]["loop"]["updates"] == runs[1]["loop"]["updates"]


def test_evaluation_does_not_change_the_trajectory(tmp_path: Path, tmaze_eval_run) -> None:
    run_dir, cfg_on, with_eval = tmaze_eval_run
    cfg_off = make_cfg("tmaze")
    assert train(cfg_off, make_ctx(tmp_path)) == "done"
    without = final_state(tmp_path, cfg_off)
    assert_same(without, with_eval, metrics=False)  # agent state, policy carry, envs, counters, key, replay
    rows = [json.loads(line) for line in with_eval["metrics"].splitlines()]
    evals = [r for r in rows if "eval/return" in r]
    assert [r["env_steps"] for r in evals] == [32, 64, 96]
    assert all(set(r) == {"env_steps", "eval/return", "eval/length", "eval/success"} for r in evals)
    assert all(r["eval/length"] == 7 and r["eval/success"] in (0, 1 / 3, 2 / 3, 1) for r in evals)  # L=6 passive
    # the training rows are the same bytes: evaluation adds its own rows and changes no other
    assert b"".join(line for line in with_eval["metrics"].splitlines(keepends=True)
                    if b"eval/" not in line) == without["metrics"]
    assert sorted(p.name for p in (run_dir / "media").iterdir()) == [
        f"eval_{s:010d}_episode.png" for s in (32, 64, 96)]
    from PIL import Image

    with Image.open(run_dir / "media" / "eval_0000000096_episode.png") as im:
        assert im.format == "PNG" and im.size == (640, 480)
        im.verify()


def test_rows_after_the_last_commit_are_redone_not_duplicated(tmp_path: Path) -> None:
    from agent.events import Committed, LoopEvent, Resumed, Stopped

    cfg = make_cfg("tmaze")
    first: list[LoopEvent] = []
    assert train(cfg, make_ctx(tmp_path, stop_after=40, events=first)) == "stopped"
    # 40 iterations of 2 envs; the stop's commit (the first: commit_every_min is an hour) is 1, then the stop
    assert [type(e) for e in first] == [Committed, Stopped] and first[1] == Stopped(80), first
    assert (first[0].commit, first[0].env_steps, first[0].background) == (1, 80, False), first
    assert all(LoopEvent.from_json(json.loads(json.dumps(e.to_json()))) == e for e in first)
    metrics = tmp_path / "logs" / "metrics.jsonl"
    committed = metrics.read_bytes()
    # A killed attempt may have written rows past its last commit; they must not survive the resume.
    metrics.write_bytes(committed + json.dumps({"env_steps": 999}).encode() + b"\n")
    second: list[LoopEvent] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(cfg, make_ctx(tmp_path, token="t1", events=second)) == "done"
    assert not [w for w in caught if "different hardware" in str(w.message)], "the same machine resumed"
    assert second[0] == Resumed(80, first[0].updates, 1) and [type(e) for e in second] == [Resumed, Committed]
    assert (second[1].commit, second[1].env_steps) == (2, 96), second
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [16, 32, 48, 64, 80, 96]


def test_periodic_commits_wait_for_a_whole_inner_chunk(tmp_path: Path) -> None:
    cfg = make_cfg("tmaze", commit_every_min=1e-6)  # 60 us: a commit is due after every step
    cfg = replace(cfg, replay=replace(cfg.replay, keep=100))
    assert train(cfg, make_ctx(tmp_path)) == "done"
    ts = sorted(json.loads(p.read_text())["t"] for p in (tmp_path / "durable" / "manifests").glob("*.json"))
    # inner=8, 48 steps per stream: a periodic commit at each whole inner chunk, then the end's commit
    assert ts == [8, 16, 24, 32, 40, 48, 48], ts


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    from agent.train import ResumeError

    cfg = make_cfg("tmaze")
    assert train(cfg, make_ctx(tmp_path, stop_after=5)) == "stopped"
    other = replace(cfg, seed=4)
    with pytest.raises(ResumeError, match="another config"):
        train(other, make_ctx(tmp_path, token="t1"))


def test_make_eval_evaluates_the_newest_commit_read_only(tmaze_eval_run, capsys) -> None:
    from agent.evaluate import EvalResult
    from buffer import read_latest_manifest
    from orchestrator.cli import main

    run_dir, cfg, reference = tmaze_eval_run
    durable = run_dir / "durable"

    def store() -> dict:
        return {str(p.relative_to(durable)): p.read_bytes() if p.is_file() else None for p in durable.rglob("*")}

    before = store()
    commit = read_latest_manifest(str(durable))["commit"]
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert store() == before, "make eval wrote to the durable store"
    assert f"commit {commit} at env step 96: 3 episodes" in capsys.readouterr().out
    result = EvalResult.from_json(json.loads((run_dir / "eval" / f"{commit:010d}.json").read_text()))
    assert EvalResult.from_json(result.to_json()) == result
    assert (result.commit, result.env_steps, result.seed, result.policy) == (commit, 96, 3, "mode")
    # the run's seed at the commit's env step: the very evaluation the run logged there
    logged = [json.loads(line) for line in reference["metrics"].splitlines()]
    assert result.row() == next(r for r in logged if "eval/return" in r and r["env_steps"] == 96)
    assert result.media == {"episode": f"eval/{commit:010d}_episode.png"} and (run_dir / result.media["episode"]).stat()

    assert main(["eval", "--run", str(run_dir), "--episodes", "2", "--seed", "11"]) == 0
    assert store() == before
    other = EvalResult.from_json(json.loads((run_dir / "eval" / f"{commit:010d}.json").read_text()))
    assert (other.seed, len(other.returns), len(other.lengths)) == (11, 2, 2)
    assert main(["eval", "--run", str(run_dir / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    from agent.evaluate import EvalError, evaluate_commit

    with pytest.raises(EvalError, match="another config"):  # config.yaml edited after the run started
        evaluate_commit(replace(cfg, seed=4), str(durable), run_dir)
    with pytest.raises(EvalError, match="no commit yet"):
        evaluate_commit(cfg, str(run_dir / "no-durable"), run_dir)
    assert store() == before and not (run_dir / "no-durable").exists()
