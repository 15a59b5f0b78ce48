"""The memory estimate at submit: hand-computed parts on a tiny config, the refusal of mmaze9x9 on the dev profile
through the real compose + submit path (Slurm commands faked at the runner), the CPU warning and FORCE."""

from __future__ import annotations

import io
import re

import pytest

from orchestrator import launch, resources
from orchestrator.compose import compose_runs
from orchestrator.resources import MB, ResourceError
from orchestrator.slurm import SlurmError


def sinfo(mb: str):
    """A runner answering `sinfo -o %m` like the dev cluster (one node), and nothing else."""
    calls = []

    def run(argv: list[str]) -> str:
        calls.append(argv)
        if argv[0] == "sinfo" and "%m" in argv:
            return f"{mb}\n"
        raise SlurmError(f"unexpected command {argv}")

    run.calls = calls
    return run


def meminfo(tmp_path, available_kb: int):
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       99999999 kB\nMemFree:          1000 kB\nMemAvailable:   {available_kb} kB\n")
    return p


def tiny(args: str = "", profile: str = "local"):
    return compose_runs("smoke", None, "train.num_envs=3 replay.cache_mb=64 replay.chunk=128 replay.inner=64 "
                        "replay.prefetch=2 train.batch=2 train.length=32 " + args, profile)[0].cfg


def test_estimate_parts_by_hand():
    cfg = tiny()
    est = resources.estimate(cfg)
    state, policy, params = resources.learner_bytes(cfg, {"vector": (4,)}, 4)
    assert params == 18839 and state > 4 * params  # params + 2 Adam moments + slow critic, f32
    step = 4 * 4 + 4 + 4 + 3  # vector (4,) f32, action, reward, three flags
    assert est.envs_mb == 3 * 45
    assert est.replay_mb == pytest.approx(64 + (2 * 3 * 128 + 3 * 2 * 32) * step / MB)
    assert est.state_mb == pytest.approx(2 * state / MB)
    assert est.overhead_mb == 1400
    assert est.total_mb == pytest.approx(est.envs_mb + est.replay_mb + est.state_mb + 1400)
    # in-process envs add what is left of a worker without its interpreter; a lag keeps policy params copies
    inproc = resources.estimate(tiny("train.env_processes=false train.policy_lag=2"))
    assert inproc.envs_mb == 3 * 1 and inproc.state_mb == pytest.approx((2 * state + 2 * policy) / MB)


def test_local_refusal_counts_the_runs_started_at_once(tmp_path):
    cfg = tiny("cluster.cpus=4")
    need_mb = resources.estimate(cfg).total_mb
    ok = meminfo(tmp_path, int(need_mb * 1024 * 2.5))
    resources.check(cfg, "local", runs_at_once=2, meminfo=ok, out=io.StringIO())
    with pytest.raises(ResourceError) as e:
        resources.check(cfg, "local", runs_at_once=3, meminfo=ok, out=io.StringIO())
    msg = str(e.value)
    assert "\n" not in msg and "3 runs at once" in msg and "MemAvailable" in msg and "FORCE=1" in msg
    out = io.StringIO()  # the escape hatch: the refusal becomes a warning
    resources.check(cfg, "local", runs_at_once=3, force=True, meminfo=ok, out=out)
    assert out.getvalue().startswith("warning (FORCE): ") and out.getvalue().count("\n") == 1


def test_slurm_limit_is_mem_gb_when_set_else_the_node(tmp_path):
    cfg = tiny("cluster.kind=slurm cluster.mem_gb=1", "dev")
    need = resources.estimate(cfg).total_mb
    assert need > 1024
    with pytest.raises(ResourceError, match=r"cluster.mem_gb=1 of profile dev"):
        resources.check(cfg, "dev", runner=sinfo("999999"), out=io.StringIO())
    unset = tiny("cluster.kind=slurm", "dev")
    resources.check(unset, "dev", runner=sinfo(f"{int(need) + 10}+"), out=io.StringIO())
    with pytest.raises(ResourceError, match=r"sets no cluster.mem_gb, and the largest node of partition low"):
        resources.check(unset, "dev", runner=sinfo(str(int(need) - 10)), out=io.StringIO())
    out = io.StringIO()  # sinfo cannot say (RealMemory unset reads 1): unchecked, and the user is told
    resources.check(unset, "dev", runner=sinfo("1"), out=out)
    assert "unchecked: set cluster.mem_gb" in out.getvalue()


def test_warns_when_num_envs_exceeds_cpus(tmp_path):
    big = meminfo(tmp_path, 10**9)
    out = io.StringIO()
    resources.check(tiny("cluster.cpus=2"), "local", meminfo=big, out=out)
    assert "warning: train.num_envs=3 exceeds cluster.cpus=2" in out.getvalue()
    assert out.getvalue().count("\n") == 1
    for args in ("cluster.cpus=3", "cluster.cpus=2 train.env_processes=false"):
        out = io.StringIO()
        resources.check(tiny(args), "local", meminfo=big, out=out)
        assert out.getvalue() == "", args


def test_mmaze9x9_on_the_dev_profile_is_refused_with_the_numbers(root, capsys, monkeypatch):
    """`make submit EXP=mmaze9x9` on dev (1 CPU, no mem_gb) on the dev cluster's 21.2 GB node."""
    runner = sinfo("21694")
    with pytest.raises(ResourceError) as e:
        launch.submit("mmaze9x9", cluster="slurm", profile="dev", runner=runner)
    msg = str(e.value)
    assert "\n" not in msg
    assert re.search(r"learner state 2\.2 GB \(9\d\.\dM params\)", msg), msg  # ~93-95M with either decoder
    for part in ("mmaze9x9 needs ~64.5 GB", "40 mmaze env processes x 1.5 GB = 59.4 GB",
                 "profile dev sets no cluster.mem_gb", "partition low has 21.2 GB (sinfo)", "FORCE=1"):
        assert part in msg, msg
    assert "warning: train.num_envs=40 exceeds cluster.cpus=1 of profile dev" in capsys.readouterr().err
    assert runner.calls == [["sinfo", "-h", "-o", "%m", "-p", "low"]]
    assert not root.exists() or not any(root.iterdir()), "nothing may be created before the refusal"
    # FORCE: past the resource check, on to the next preflight (no sbatch on an empty PATH: nothing is launched)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(launch.PreflightError, match="sbatch"):
        launch.submit("mmaze9x9", cluster="slurm", profile="dev", runner=runner, force=True,
                      args="cluster.durable=" + str(root.parent / "durable"))
    assert "warning (FORCE): mmaze9x9 needs ~64.5 GB" in capsys.readouterr().err


def test_worker_rss_table_covers_a_measured_tmaze_worker():
    """The table's T-Maze figure is not below what a real spawned worker holds here (the measurement itself)."""
    from agent.envs import EnvConfig

    rows = resources.measure_worker_rss(EnvConfig(kind="tmaze", id="passive"), num_envs=1, steps=50)
    assert len(rows) == 1 and 10 < rows[0]["VmHWM"] <= resources.WORKER_RSS_MB["tmaze"] * 1.25
