"""Evaluation pieces on their own: the image-env media (Memory Maze), video encoders, the eval config, the
read-only commit reader. The loop's evaluations (same trajectory with eval on or off, exact resume, `make eval`)
are tested in test_train.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from agent.config import agent_config_from
from agent.envs import EnvConfig, VecEnv
from agent.evaluate import EvalResult, Evaluator, crossed
from agent.media import CONTEXT_RGB, IMAGINED_RGB, dream_strip, read_video, video_format, write_video
from agent.run_config import AgentRunConfig, EvalConfig
from agent.train import config_digest
from buffer import FieldSpec, Replay, ReplayConfig, read_latest_commit

REPO = Path(__file__).resolve().parents[2]


def test_memory_maze_eval_writes_decodable_episode_and_dream_videos(tmp_path: Path) -> None:
    # tiny agent, untrained; 12 steps of one episode keep the Memory Maze part (build + reset ~7 s) short
    agent = agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / "tiny.yaml"))
    cfg = AgentRunConfig(seed=1, agent=agent, env=EnvConfig(kind="mmaze", id="9x9"),
                         eval=EvalConfig(every=1, episodes=1, max_steps=12, dream_context=4, dream_steps=20))
    ev = Evaluator(cfg, tmp_path)
    try:
        params = jax.jit(ev.learner.init)(jax.random.PRNGKey(0)).params
        result = ev.run(params, 100, name="eval_0000000100")
    finally:
        ev.close()
    assert (result.returns[0] >= 0, result.lengths, result.truncated, result.successes) == (True, (12,), 1, None)
    assert video_format() == "mp4"  # imageio-ffmpeg is a dependency
    assert result.media == {"episode": "media/eval_0000000100_episode.mp4",
                            "dream": "media/eval_0000000100_dream.mp4"}
    episode = read_video(tmp_path / result.media["episode"])
    dream = read_video(tmp_path / result.media["dream"])
    # 13 observations (first + 12 steps), shown at twice the size; the dream has all 13 (< 4 + 20)
    assert episode.shape == (13, 128, 128, 3) and dream.shape == (13, 128, 384, 3)
    # the dream's left panel is the episode itself (up to the codec)
    assert np.abs(dream[:, :, :128].astype(int) - episode.astype(int)).mean() < 4
    assert len({f.tobytes() for f in episode}) > 1, "the agent should see something change"
    # border of the imagined panel: green for the 4 context steps, red after (away from the chroma edges)
    mid = dream[:, 64, 256 + 1].astype(int)
    assert np.abs(mid[:4] - CONTEXT_RGB).max() < 60 and np.abs(mid[4:] - IMAGINED_RGB).max() < 60


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_videos_decode_to_their_frames(tmp_path: Path, fmt: str) -> None:
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    for t in range(6):
        frames[t, :, : 8 * (t + 1)] = (255, 255, 0)  # a yellow bar growing by 8 pixels a frame
    path = write_video(tmp_path / "bar", frames, fps=5, fmt=fmt)
    assert path.name == f"bar.{fmt}" and [p.name for p in tmp_path.iterdir()] == [path.name]
    back = read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "bad", frames.astype(np.float32), fps=5, fmt=fmt)


def test_dream_strip_lays_out_real_recon_imagined() -> None:
    real, recon, imag = (np.full((3, 8, 8, 3), v, np.uint8) for v in (10, 20, 30))
    strip = dream_strip(real, recon, imag, context=1, border=1)
    assert strip.shape == (3, 8, 24, 3)
    assert (strip[:, :, :8] == 10).all() and (strip[:, :, 8:16] == 20).all()
    assert (strip[:, 1:-1, 17:-1] == 30).all()
    assert tuple(strip[0, 0, 16]) == CONTEXT_RGB and tuple(strip[2, 0, 16]) == IMAGINED_RGB


def test_evaluations_fall_on_the_multiples_crossed() -> None:
    # the loop advances 3 env steps an iteration: evaluations every 4 steps happen at 6 (crossed 4) and 9 (8)
    assert [s for s in range(3, 13, 3) if crossed(s, 3, 4)] == [6, 9, 12]
    assert not any(crossed(s, 3, 0) for s in range(3, 13, 3))


def test_eval_config_is_validated_and_does_not_change_the_digest() -> None:
    from bench.learn import compose
    from orchestrator.config import ConfigError, validate

    base = compose("tiny", "tmaze_passive", 3000, ["env.memory_length=5"], seed=0)
    other = dataclasses.replace(base, eval=EvalConfig(every=500, episodes=2, policy="sample", video=False))
    assert config_digest(other) == config_digest(base)  # a run resumes with other eval settings
    assert validate({"eval": {"every": 500, "policy": "sample"}}).eval.policy == "sample"
    with pytest.raises(ConfigError, match="eval.policy='greedy'"):
        validate({"eval": {"policy": "greedy"}})
    with pytest.raises(ConfigError, match="eval.episodez"):
        validate({"eval": {"episodez": 3}})
    with pytest.raises(ConfigError, match="episodes"):
        validate({"eval": {"episodes": 0}})


def test_eval_result_json_round_trip() -> None:
    r = EvalResult(96, 3, "sample", (1.0, -0.5), (7, 9), (True, False), truncated=1,
                   media={"episode": "eval/0000000004_episode.mp4"}, commit=4)
    d = r.to_json()
    assert d["summary"] == {"env_steps": 96, "eval/return": 0.25, "eval/length": 8.0, "eval/success": 0.5}
    assert EvalResult.from_json(d) == r
    assert "eval/success" not in dataclasses.replace(r, successes=None).row()


def test_read_latest_commit_is_read_only(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert read_latest_commit(str(missing)) is None and not missing.exists()
    schema = {"x": FieldSpec((), "float32")}
    cfg = ReplayConfig(capacity=64, chunk=8, inner=4, prefetch=0, threads=1, fsync=False)
    durable = tmp_path / "durable"
    with Replay(schema, 1, str(tmp_path / "scratch"), str(durable), cfg, batch=1, length=2) as r:
        r.add({"x": np.ones(1, np.float32)})
        r.commit({"n": 1}, {"a": b"first"})
        r.add({"x": np.ones(1, np.float32)})
        r.commit({"n": 2}, {"a": b"second", "b": b""})
    files = {p: p.read_bytes() for p in durable.rglob("*") if p.is_file()}
    got = read_latest_commit(str(durable))
    assert (got.commit_id, got.extra, got.blobs) == (2, {"n": 2}, {"a": b"second", "b": b""})
    assert {p: p.read_bytes() for p in durable.rglob("*") if p.is_file()} == files


def test_restart_gives_the_episodes_of_a_fresh_vecenv() -> None:
    cfg = EnvConfig(kind="tmaze", id="passive", memory_length=3)
    with VecEnv(cfg, 3, seed=5, processes=False) as used, VecEnv(cfg, 3, seed=9, processes=False) as fresh:
        used.reset()
        used.step(np.zeros(3, int))  # mid-episode of another seed
        got, want = used.restart(9, 0), fresh.reset()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        # the cue (component 2) is the episode's own: episode 1 of seed 9 is what seed 9's envs play second
        for _ in range(4):
            fresh.step(np.zeros(3, int))
        np.testing.assert_array_equal(used.restart(9, 1)["vector"], fresh.step(np.zeros(3, int))[0]["vector"])
        with pytest.raises(ValueError, match="episode=-1"):
            used.restart(9, -1)


def test_eval_policy_modes() -> None:
    from agent.learner import make_learner

    agent = agent_config_from(OmegaConf.load(REPO / "experiments" / "agent" / "tiny.yaml"))
    agent = dataclasses.replace(agent, sample_latents=False)  # z is its mode: only the action draw uses the key
    learner = make_learner(agent, {"vector": (4,)}, 4)
    params = jax.jit(learner.init)(jax.random.PRNGKey(0)).params
    obs, first = {"vector": jax.random.normal(jax.random.PRNGKey(1), (64, 4))}, np.ones(64, bool)
    carry = learner.init_policy_carry(64)

    step = jax.jit(learner.policy_step, static_argnames="mode")

    def act(mode: str, seed: int) -> np.ndarray:
        return np.asarray(step(params, carry, obs, first, jax.random.PRNGKey(seed), mode=mode)[1])

    assert (act("mode", 2) == act("mode", 3)).all()
    assert (act("sample", 2) != act("sample", 3)).any()
    assert (act("sample", 2) == act("explore", 2)).all()  # without agent.act_explore the same draw
    with pytest.raises(ValueError, match="greedy"):
        act("greedy", 2)


def test_media_go_to_wandb_when_it_is_on(tmp_path: Path) -> None:
    from agent.media import episode_plot
    from agent.metrics import MetricsLog
    from agent.run_config import WandbConfig

    video = write_video(tmp_path / "media" / "v", np.zeros((4, 16, 16, 3), np.uint8), fps=5)
    plot = episode_plot(tmp_path / "media" / "p.png", np.zeros((3, 2)), np.zeros(2, int), np.zeros(3), 2, "t")
    for mode in ("disabled", "offline"):
        log = MetricsLog(tmp_path / mode, WandbConfig(mode=mode), f"r2i-media-{mode}")
        log.open(committed_bytes=0)
        log.write({"env_steps": 8, "eval/return": 1.0}, {})
        log.log_media(8, {"dream": video, "episode": plot})
        log.close()
    assert not (tmp_path / "disabled" / "wandb").exists()
    run = next((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    sent = sorted(p.relative_to(run / "files" / "media").parts for p in run.glob("files/media/*/media/*"))
    assert [(kind, name.split("_")[0]) for kind, _, name in sent] == [("images", "episode"), ("videos", "dream")]
