"""VecEnv: auto-reset semantics, worker mode == in-process mode, exact resume across processes, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from agent.envs import EnvConfig, EnvWorkerError, SnapshotError, VecEnv, episode_seed, make_env

TMAZE = EnvConfig(kind="tmaze", id="active", memory_length=4)
POPGYM = EnvConfig(kind="popgym", id="popgym-RepeatPreviousEasy-v0")


def rollout(vec: VecEnv, actions: np.ndarray):
    """Step through actions (T, W); -> list of batches (dict of arrays) and all finished-episode stats."""
    batches, stats = [], []
    for a in actions:
        b, s = vec.step(a)
        batches.append(b)
        stats.extend(s)
    return batches, stats


def same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


def test_auto_reset_semantics_and_episode_stats():
    w, t = 3, 40
    actions = np.random.default_rng(0).integers(4, size=(t, w))
    with VecEnv(TMAZE, w, seed=7, processes=False) as vec:
        first = vec.reset()
        assert first["is_first"].all() and not first["is_last"].any() and (first["reward"] == 0).all()
        assert first["vector"].shape == (w, 4) and first["vector"].dtype == np.float32
        batches, stats = rollout(vec, actions)
    assert stats, "no episode ended"
    for i in range(w):
        rows = [first] + batches
        ep, ret, length = 0, 0.0, 0
        mine = [s for s in stats if s.env_index == i]
        for k in range(1, len(rows)):
            prev, cur = rows[k - 1], rows[k]
            if prev["is_last"][i]:
                # The step after an end starts the next episode; its action is ignored, its reward is 0.
                assert cur["is_first"][i] and cur["reward"][i] == 0 and not cur["is_last"][i]
                s = mine[ep]
                assert (s.episode_index, s.length) == (ep, length) and s.ret == pytest.approx(ret)
                assert s.success in (True, False)
                ep, ret, length = ep + 1, 0.0, 0
            else:
                assert not cur["is_first"][i]
                ret += float(cur["reward"][i])
                length += 1
            assert cur["is_terminal"][i] <= cur["is_last"][i]
        assert len(mine) == ep
    # Episode e of env i is exactly what a lone env seeded with episode_seed(seed, i, e) shows.
    lone = make_env(TMAZE)
    assert np.array_equal(first["vector"][2], lone.reset(episode_seed(7, 2, 0))["vector"])


@pytest.mark.parametrize("cfg", [TMAZE, POPGYM], ids=["tmaze", "popgym"])
def test_worker_mode_equals_in_process_mode(cfg):
    w, t = 2, 120
    actions = np.random.default_rng(1).integers(4, size=(t, w))
    with VecEnv(cfg, w, seed=3, processes=False) as a, VecEnv(cfg, w, seed=3, processes=True) as b:
        assert a.obs_spec() == b.obs_spec() and a.num_actions == b.num_actions
        same([a.reset()], [b.reset()])
        ba, sa = rollout(a, actions)
        bb, sb = rollout(b, actions)
    same(ba, bb)
    assert sa == sb and len(sa) >= 2


@pytest.mark.parametrize("cfg", [TMAZE, POPGYM], ids=["tmaze", "popgym"])
def test_snapshot_restore_in_fresh_vecenv_continues_identically(cfg):
    w, t, cut = 3, 90, 37
    actions = np.random.default_rng(2).integers(4, size=(t, w))
    with VecEnv(cfg, w, seed=11, processes=False) as ref:
        ref.reset()
        before, _ = rollout(ref, actions[:cut])
        blobs = ref.snapshot()
        after, stats_after = rollout(ref, actions[cut:])
    assert not before[-1]["is_first"].all(), "cut should fall mid-episode"
    for processes in (False, True):
        with VecEnv(cfg, w, seed=11, processes=processes) as vec:
            same([vec.restore(blobs)], [before[-1]])
            got, stats = rollout(vec, actions[cut:])
        same(got, after)
        assert stats == stats_after


@pytest.mark.parametrize("cfg", [TMAZE, POPGYM], ids=["tmaze", "popgym"])
def test_snapshot_at_every_cut_including_episode_ends(cfg):
    w, t = 2, 70
    actions = np.random.default_rng(5).integers(4, size=(t, w))
    with VecEnv(cfg, w, seed=2, processes=False) as ref, VecEnv(cfg, w, seed=2, processes=False) as vec:
        ref.reset()
        start = ref.snapshot()
        full, _ = rollout(ref, actions)
        assert any(b["is_last"].any() for b in full[:-1])
        for cut in range(1, t):
            ref.restore(start)
            rollout(ref, actions[:cut])
            assert vec.restore(ref.snapshot())["is_last"].tolist() == full[cut - 1]["is_last"].tolist()
            got, _ = rollout(vec, actions[cut:cut + 8])
            same(got, full[cut:cut + 8])


def test_restore_in_a_new_python_process(tmp_path):
    w, t, cut = 2, 60, 23
    actions = np.random.default_rng(4).integers(4, size=(t, w))
    with VecEnv(POPGYM, w, seed=5, processes=False) as ref:
        ref.reset()
        rollout(ref, actions[:cut])
        for k, v in ref.snapshot().items():
            (tmp_path / k).write_bytes(v)
        after, _ = rollout(ref, actions[cut:])
    np.save(tmp_path / "actions.npy", actions[cut:])
    script = textwrap.dedent(f"""
        import pathlib, numpy as np
        from agent.envs import EnvConfig, VecEnv
        d = pathlib.Path({str(tmp_path)!r})
        cfg = EnvConfig(kind="popgym", id={POPGYM.id!r})
        with VecEnv(cfg, {w}, seed=5, processes=False) as vec:
            vec.restore({{f"env_{{i:03d}}": (d / f"env_{{i:03d}}").read_bytes() for i in range({w})}})
            out = [vec.step(a)[0] for a in np.load(d / "actions.npy")]
        np.savez(d / "out.npz", **{{k: np.stack([b[k] for b in out]) for k in out[0]}})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with np.load(tmp_path / "out.npz") as z:
        for k in after[0]:
            assert np.array_equal(z[k], np.stack([b[k] for b in after])), k


def test_snapshot_refuses_mismatched_layout():
    with VecEnv(TMAZE, 2, seed=0, processes=False) as vec:
        vec.reset()
        blobs = vec.snapshot()
    with VecEnv(TMAZE, 3, seed=0, processes=False) as vec, pytest.raises(SnapshotError, match="keys"):
        vec.restore(blobs)
    with VecEnv(TMAZE, 2, seed=1, processes=False) as vec, pytest.raises(SnapshotError, match="seed"):
        vec.restore(blobs)


def test_worker_errors_name_the_env_and_close_cleans_up():
    vec = VecEnv(TMAZE, 3, seed=0, processes=True)
    try:
        procs = list(vec._procs)
        vec.reset()
        vec.step(np.zeros(3, int))
        with pytest.raises(EnvWorkerError, match=r"env worker 1 .*failed:(.|\n)*not an int in \[0, 4\)"):
            vec.step(np.array([0, 9, 0]))
        with pytest.raises(EnvWorkerError, match="unusable"):
            vec.step(np.zeros(3, int))
    finally:
        vec.close()
    assert not any(p.is_alive() for p in procs)

    vec = VecEnv(TMAZE, 2, seed=0, processes=True)
    try:
        procs = list(vec._procs)
        vec.reset()
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].join(5)  # dead before the send: the broken pipe names the worker
        with pytest.raises(EnvWorkerError, match="env worker 1 .*died.*exit code -9"):
            vec.step(np.zeros(2, int))
    finally:
        vec.close()
    assert not any(p.is_alive() for p in procs)
    vec.close()  # idempotent


def test_worker_construction_failure_is_reported_with_the_cause():
    bad = EnvConfig(kind="popgym", id="popgym-PositionOnlyPendulumEasy-v0")  # continuous actions
    with pytest.raises(EnvWorkerError, match=r"env worker 0 (.|\n)*only Discrete and MultiDiscrete"):
        VecEnv(bad, 1, seed=0, processes=True)
