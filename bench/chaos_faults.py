"""Fault injection on a real Slurm cluster: one trial = one run submitted like `make submit`, interrupted by one
fault kind at random (seeded) moments, run to its end, and fingerprinted (`orchestrator.verify`).

Kinds: timeout (short time limit: Slurm's USR2), preempt (a high-priority job), requeue (`scontrol requeue`),
sigkill (the step's Python, no grace), kill_mid_commit (SIGKILL while a commit's files are appearing),
scratch_wipe (requeued and held, scratch deleted: a new node), corrupt_chunk (held, scratch deleted, bytes
flipped in the newest durable chunk), second_writer (a second copy of the job started while the first runs).

Jobs run `bench.chaos_entry:instrumented_train`, which records what each attempt did as events; the verdict
(`bench.chaos_verdict`) reads them. `bench.chaos` is the driver (`make chaos`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from bench.chaos_entry import ENTRY, EVENTS, TARGET_ENV
from bench.chaos_verdict import compact_events, read_events
from buffer import DurableStoreError, manifest_keys, read_latest_manifest
from orchestrator import launch
from orchestrator.run_state import RunState, read_run_state
from orchestrator.status import pid_alive
from orchestrator.sweep import Sweep
from orchestrator.verify import fingerprint

REPO = Path(__file__).resolve().parents[1]
KINDS = ("timeout", "preempt", "requeue", "sigkill", "kill_mid_commit", "scratch_wipe", "corrupt_chunk",
         "second_writer")
END_STATES = ("done", "failed", "requeue_limit", "cancelled")
LOCAL_ONLY = ("kill_mid_commit", "corrupt_chunk")  # they need the durable store on a filesystem


class ChaosError(RuntimeError):
    """A trial could not be carried out (cluster not answering, run never started): not a finding."""


# --- outside: one trial -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What a trial submits: experiment, seed, hydra overrides (without the fault's own), target entry."""

    exp: str = "smoke"
    seed: int = 0
    # 128-step shards and pages of 4: a run of 5000 steps a stream finishes 38 shards and writes 9 pages; ~70 s
    # of training here, long enough for five faults an attempt apart
    overrides: str = ("train.steps=10000 train.prefill=200 train.log_every=100 train.commit_every_min=0.1 "
                      "replay.chunk=128 replay.table_page=4 cluster.cpus=1 cluster.time_min=10")
    target: str = "agent.train:train"
    env: dict = field(default_factory=dict)  # extra environment of the jobs (e.g. R2I_TEST_STEP_S)
    max_delay_s: float = 20.0  # faults land uniformly in [0, max_delay_s] after an attempt's first commit
    faults_per_trial: int = 1  # faults delivered to one run, one per attempt (second_writer: 1)
    timeout_s: float = 900.0  # one trial, submit to end
    fault_after_steps: int = 0  # no fault before a commit holds this many env steps (a large buffer first)


def _sh(*cmd: str, check: bool = True) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise ChaosError(f"{' '.join(cmd)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def _squeue_state(job: str) -> str | None:
    out = _sh("squeue", "-h", "-j", job, "-o", "%T", check=False)
    return out.split()[0] if out else None


@dataclass
class Trial:
    """A submitted run and what the injector observed about it."""

    kind: str
    sweep: Sweep
    run_dir: Path
    durable: str
    scratch: str
    job: str
    rng: random.Random
    t_submit: float
    commits: list = field(default_factory=list)  # (time seen, env_steps) of every new newest manifest
    notes: dict = field(default_factory=dict)  # the current fault's observations
    faults: list = field(default_factory=list)  # every fault's notes
    extra_jobs: list = field(default_factory=list)

    def state(self) -> RunState:
        """The run's state.json; before the job's first word, an empty record (no state, no attempts)."""
        return read_run_state(self.run_dir / "state.json") or RunState(state="", updated=0.0)

    @property
    def remote(self) -> bool:
        """An object-store durable URL (s3://...): read through the buffer's public surface, not the filesystem."""
        return "://" in self.durable

    def manifests(self) -> list[str]:
        """Names of the published manifests, oldest first (a plain listing: kill_mid_commit polls it hot)."""
        try:
            if self.remote:
                return sorted(k.rsplit("/", 1)[-1] for k in manifest_keys(self.durable))
            return sorted(n for n in os.listdir(Path(self.durable) / "manifests") if n.endswith(".json"))
        except (FileNotFoundError, DurableStoreError):  # before the first commit
            return []

    def observe(self) -> None:
        """Record the newest manifest's env steps when it changed (for 'committed steps lost')."""
        ms = self.manifests()
        if not ms or (self.commits and self.commits[-1][2] == ms[-1]):
            return
        try:
            if self.remote:
                m = read_latest_manifest(self.durable)
                if m is None or m["key"].rsplit("/", 1)[-1] != ms[-1]:
                    return  # a newer one appeared between the listing and the read: the next poll takes it
            else:
                m = json.loads((Path(self.durable) / "manifests" / ms[-1]).read_text())
        except (OSError, ValueError, DurableStoreError):
            return
        prog = m["extra"]["progress"]
        self.commits.append((time.time(), int(prog["env_steps"]), ms[-1], int(prog.get("updates", 0))))

    def wait(self, cond, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            self.observe()
            if cond():
                return
            time.sleep(poll_s)
        raise ChaosError(f"{self.kind}: timed out after {timeout_s:.0f} s waiting for {what} "
                         f"(job {self.job} {_squeue_state(self.job)}, state {self.state().state})")

    def live(self) -> bool:
        return any(_squeue_state(j) is not None for j in [self.job, *self.extra_jobs])

    def attempt_pid(self) -> int:
        return self.state().attempts[-1].pid

    def wait_running_commit(self, min_attempts: int, min_steps: int = 0, timeout_s: float = 600) -> None:
        """Until attempt `min_attempts` (or a later one) has committed after an update and at or past
        `min_steps` env steps, or the run ended: its act and train programs are compiled (a signal during the
        first compile is not answered within a 15 s grace: a known limit, not what these trials probe)."""
        def ready() -> bool:
            st = self.state()
            if st.state in END_STATES:
                return True
            att = st.attempts
            return st.state == "running" and len(att) >= min_attempts and any(
                c[0] > att[-1].start and c[3] > 0 and c[1] >= min_steps for c in self.commits)

        self.wait(ready, timeout_s, f"a commit after an update at >= {min_steps} env steps")

    def random_delay(self, max_s: float) -> None:
        d = self.rng.uniform(0.0, max_s)
        self.notes["delay_s"] = round(d, 2)
        _sleep_observing(self, d)


def _sleep_observing(t: Trial, seconds: float) -> None:
    end = time.time() + seconds
    while time.time() < end and t.state().state not in END_STATES:
        t.observe()
        time.sleep(min(0.2, max(0.0, end - time.time())))


def _hold_and(t: Trial, action) -> None:
    """Requeue the job held, run `action` while no attempt can start, then release it (a new node)."""
    attempts = len(t.state().attempts)
    pid = t.attempt_pid()
    _sh("scontrol", "requeuehold", t.job)
    t.wait(lambda: not pid_alive(pid) and _squeue_state(t.job) in ("PENDING", None), 120, "the held requeue")
    if t.state().state in END_STATES or _squeue_state(t.job) is None:
        t.notes["missed"] = "the run ended before the held requeue took effect"
        return
    _sh("scontrol", "hold", t.job, check=False)  # the host-side teardown may have requeued it again
    if len(t.state().attempts) != attempts:
        raise ChaosError(f"{t.kind}: a new attempt started before the scratch could be wiped")
    t.observe()
    action()
    _sh("scontrol", "release", t.job)


def _wipe(t: Trial) -> None:
    shutil.rmtree(t.scratch, ignore_errors=True)
    t.notes["scratch_wiped"] = True


def _corrupt_newest_chunk(t: Trial) -> None:
    """Flip 16 bytes in place in a chunk of the newest shard the newest manifest references (size unchanged)."""
    from buffer import CorruptChunkError, chunk_objects

    url = str(t.durable)
    newest, *older = manifest_keys(url)
    objs = chunk_objects(url, newest)
    if not objs:
        raise ChaosError("corrupt_chunk: the newest manifest references no finished chunk (raise steps or lower "
                         "replay.chunk)")
    top = max(o.shard for o in objs)
    key = t.rng.choice(sorted(o.key for o in objs if o.shard == top))
    p = Path(t.durable) / key
    data = bytearray(p.read_bytes())
    off = t.rng.randrange(0, max(1, len(data) - 16))
    for i in range(off, min(len(data), off + 16)):
        data[i] ^= 0xFF
    with open(p, "r+b") as f:
        f.write(data)

    def falls_back(mkey: str) -> bool:  # a restore can use this older commit: it is readable and lacks the key
        try:
            return key not in {o.key for o in chunk_objects(url, mkey)}
        except CorruptChunkError:
            return False

    t.notes.update(corrupted=key, corrupted_offset=off, manifest=newest.rsplit("/", 1)[-1],
                   fallback_possible=any(falls_back(m) for m in older))


def _commit_in_flight(durable: Path, published: set[str]) -> str | None:
    """A file of a commit whose manifest is not published yet (tmp file, or a pack without its manifest)."""
    for sub in ("packs", "manifests", "chunks"):
        base = durable / sub
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            continue
        for e in entries:
            if ".tmp-" in e.name:
                return f"{sub}/{e.name}"
            if sub == "packs" and e.name.endswith(".pack") and e.name[:-5] + ".json" not in published:
                return f"{sub}/{e.name}"
            if sub == "chunks" and e.is_dir():
                try:
                    if any(".tmp-" in n for n in os.listdir(e.path)):
                        return f"chunks/{e.name}/(tmp)"
                except FileNotFoundError:
                    pass
    return None


def inject(t: Trial, s: Settings) -> None:
    """`s.faults_per_trial` times (once for second_writer): wait for the loop to run and commit, then deliver
    the fault of `t.kind` at a random moment. Each fault's observations go to `t.faults`."""
    if t.kind in ("reference", "timeout"):  # timeout: the short limit is the fault; Slurm's timer picks when
        return
    min_attempts = 1
    for _ in range(1 if t.kind == "second_writer" else s.faults_per_trial):
        t.notes = {}
        t.faults.append(t.notes)
        t.wait_running_commit(min_attempts, s.fault_after_steps, max(600.0, s.timeout_s - (time.time() - t.t_submit)))
        # the next fault waits for the next attempt (this one may still show "running" while it commits)
        min_attempts = len(t.state().attempts) + 1
        if t.state().state not in END_STATES:
            t.random_delay(s.max_delay_s)
        if t.state().state in END_STATES:
            t.notes["missed"] = "the run ended before the fault"
            return
        _inject_once(t)
        if t.notes.get("missed"):
            return


def _inject_once(t: Trial) -> None:
    if t.remote and t.kind in LOCAL_ONLY:
        raise ChaosError(f"{t.kind} edits or watches the durable store's files; {t.durable} is an object store")
    t.notes["fault_time"] = time.time()
    if t.kind == "preempt":
        t.extra_jobs.append(_sh("sbatch", "--parsable", "-p", "high", "-c", "2", "-t", "1", "-o", "/dev/null",
                                "--wrap", "sleep 2"))
    elif t.kind == "requeue":
        _sh("scontrol", "requeue", t.job)
    elif t.kind == "sigkill":
        os.kill(t.attempt_pid(), signal.SIGKILL)
    elif t.kind == "kill_mid_commit":
        pid, d = t.attempt_pid(), Path(t.durable)
        deadline = time.time() + 120
        while time.time() < deadline:
            published = set(t.manifests())
            hit = _commit_in_flight(d, published)
            if hit:
                os.kill(pid, signal.SIGKILL)
                t.notes.update(killed_at=hit, fault_time=time.time())
                break
            time.sleep(0.0005)
        else:
            t.notes["missed"] = "no commit in flight within 120 s"
            return
        time.sleep(1.0)
        stem = hit.split("/")[-1].split(".")[0]
        t.notes["manifest_published_anyway"] = any(m.startswith(stem) for m in t.manifests())
    elif t.kind == "scratch_wipe":
        _hold_and(t, lambda: _wipe(t))
    elif t.kind == "corrupt_chunk":
        _hold_and(t, lambda: (_corrupt_newest_chunk(t), _wipe(t)))
    elif t.kind == "second_writer":
        run_dir = str(t.run_dir)
        code = f"from orchestrator.job import run_job; run_job({run_dir!r})"
        t.extra_jobs.append(_sh("sbatch", "--parsable", "-p", "low", "-c", "1", "-t", "10",
                                "-o", f"{run_dir}/logs/second-writer-%j.out", "-J", "r2i-second-writer",
                                "--wrap", f"exec {sys.executable} -c {json.dumps(code)}"))
        # as root on the dev cluster: run it now, not after other users' queued jobs (the first copy must still run)
        _sh("scontrol", "update", f"JobId={t.extra_jobs[-1]}", "Priority=4000000000", check=False)
        pid = t.attempt_pid()

        def second_entered() -> bool:
            return len({e["token"] for e in read_events(t.run_dir / "logs" / EVENTS) if e["ev"] == "entry"}) >= 2

        t.wait(lambda: second_entered() or not pid_alive(pid), 180, "the second copy to start")
        if not second_entered():  # a copy that starts after the end finds the run done and never enters
            t.notes["missed"] = "the second copy did not start while the first ran"
    else:
        raise ValueError(f"unknown fault kind {t.kind!r}; known: {', '.join(KINDS)}")


def run_trial(kind: str, index: int, s: Settings, rng: random.Random) -> dict:
    """Submit one run, inject `kind`, wait for the end; the raw record (events, observations, fingerprint)."""
    overrides = f"{s.overrides} run.entry={ENTRY}"
    if kind == "timeout":
        # the signal 20 s into each attempt: with a warm compile cache a quiet machine runs the whole smoke
        # experiment in ~35 s, inside one 45 s attempt (signal 15 s before a 1 min limit), and nothing is hit
        overrides += " cluster.time_min=1 cluster.signal_grace_s=40 cluster.max_requeues=30"
    name = f"chaos-{kind}-{index}-{time.strftime('%H%M%S', time.gmtime())}-{rng.randrange(16**4):04x}"
    # jobs (and a second writer's sbatch) inherit the submitter's env; the checkout on their path for run.entry
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {TARGET_ENV: s.target, "PYTHONPATH": path, **s.env}
    with mock.patch.dict(os.environ, env):
        return _run_trial(kind, index, s, overrides, name, rng)


def _run_trial(kind: str, index: int, s: Settings, overrides: str, name: str, rng: random.Random) -> dict:
    sweep, launched = launch.submit(s.exp, [s.seed], overrides, name, "slurm", None, follow=False)
    run = launched[0].run
    paths = sweep.paths(run).resolved()
    t = Trial(kind, sweep, paths.run_dir, paths.durable, paths.scratch, launched[0].job_id, rng, time.time())
    record: dict[str, Any] = {"kind": kind, "index": index, "sweep": name, "job": t.job}
    try:
        inject(t, s)
        t.wait(lambda: t.state().state in END_STATES and not t.live(),
               s.timeout_s - (time.time() - t.t_submit), "the run's end", poll_s=0.5)
    except ChaosError as e:
        record["error"] = str(e)
        for j in [t.job, *t.extra_jobs]:
            _sh("scancel", j, check=False)
    st = t.state()
    record.update(state=st.state or None, run_error=st.error, notes=t.faults, commits=t.commits,
                  attempts=[{k: getattr(a, k) for k in ("job_id", "restart", "start", "end", "outcome", "stop")}
                            for a in st.attempts],
                  events=compact_events(read_events(paths.logs / EVENTS)), wall_s=round(time.time() - t.t_submit, 1))
    try:
        record["fingerprint"] = fingerprint(paths.durable, paths.metrics)
    except Exception as e:  # noqa: BLE001 - a store we cannot read is a result of the trial
        record["fingerprint_error"] = f"{type(e).__name__}: {e}"
    return record
