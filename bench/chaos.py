"""`make chaos`: interrupt the `smoke` run on the dev Slurm cluster with every fault kind and compare each final
state with one uninterrupted run of the same seed, submitted the same way (same partition, CPUs, entry: the
same XLA bits). Writes bench/results/chaos.json (rewritten after every trial) and prints a markdown table.

    python -m bench.chaos [--trials-per-kind N] [--kinds a,b] [--seed S] [--args "hydra overrides"] [--also "k=v"]
                          [--stop-by HH:MM (UTC; no trial starts after)] [--out FILE] [--s3]

With --s3 every run's durable store is in a bucket of an S3 protocol server (moto, from `make setup`) that the
driver starts on this machine; the jobs reach it through the AWS variables they inherit. The kinds that edit the
store's files (kill_mid_commit, corrupt_chunk) need a filesystem store and are refused there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.chaos_faults import KINDS, LOCAL_ONLY, ChaosError, Settings, run_trial
from bench.chaos_verdict import compact_events, verdict

REPO = Path(__file__).resolve().parents[1]
S3_BUCKET = "r2i-chaos"
GRACE = {"timeout": "signal_grace_s (40 s; 15 s before the page format) to +30 s (USR2 on the 30 s timer), "
                    "limit 1 min", "preempt": "15 s (GraceTime)",
         "requeue": "10 s (KillWait after SIGTERM)", "scratch_wipe": "10 s (KillWait after SIGTERM)",
         "corrupt_chunk": "10 s (KillWait after SIGTERM)"}


def code_digest(root: Path = REPO) -> str:
    """sha256 over the code and configs the jobs import: each trial's jobs load them afresh, so an edit during a run
    would silently compare trials of different code."""
    h = hashlib.sha256()
    for pkg in ("agent", "buffer", "orchestrator", "experiments", "slurm", "bench/chaos_entry.py"):
        for f in sorted((root / pkg).rglob("*")) if (root / pkg).is_dir() else [root / pkg]:
            if f.is_file() and f.suffix in (".py", ".yaml", ".sh", ".conf") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _stats(xs: list[float]) -> dict | None:
    return {"n": len(xs), "median": round(statistics.median(xs), 2), "max": round(max(xs), 2)} if xs else None


def summarize(trials: list[dict]) -> dict:
    """Per fault kind: what an interruption cost over that kind's trials."""
    out = {}
    for kind in dict.fromkeys(t["kind"] for t in trials):
        vs = [t["verdict"] for t in trials if t["kind"] == kind]
        out[kind] = {
            "trials": len(vs), "faults_delivered": sum(v["faults_delivered"] for v in vs),
            "interruptions": sum(v["interruptions"] for v in vs),
            "finished": sum(v["done"] for v in vs), "missed": sum(v["missed"] for v in vs),
            "bit_identical": sum(v["identical"] for v in vs),
            "corrupt_restores": sum(v["corrupt_restore"] for v in vs),
            "failed_clearly": sum(v["failed_clearly"] for v in vs),
            "committed_steps_lost": sum(v["lost_steps"] for v in vs),
            "env_steps_redone": sum(v["redone_steps"] for v in vs),
            "restart_to_first_step_s": _stats([x for v in vs for x in v["restart_s"]]),
            "entry_to_resumed_s": _stats([x for v in vs for x in v.get("resume_s", [])]),
            "stop_commit_s": _stats([x for v in vs for x in v["stop_commit_s"]]),
            "signal_to_exit_s": _stats([x for v in vs for x in v["signal_to_exit_s"]]),
            "grace_window": GRACE.get(kind, "none (no signal)"),
            "errors": sorted({v["error"] for v in vs if v["error"]}),
        }
    return out


def table(summary: dict) -> str:
    """The README table: one row per fault kind."""
    def ms(s: dict | None) -> str:
        return f"{s['median']:.1f} / {s['max']:.1f}" if s else "-"

    rows = ["| fault | trials | faults delivered | interruptions | bit-identical | corrupt restores | failed clearly "
            "| committed steps lost | env steps redone | restart to 1st step s (med/max) "
            "| stop commit s (med/max) | grace |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in summary.items():
        rows.append(f"| {kind} | {k['trials']} | {k.get('faults_delivered', '-')} | {k['interruptions']} | "
                    f"{k['bit_identical']} | "
                    f"{k['corrupt_restores']} | {k['failed_clearly']} | {k['committed_steps_lost']} | "
                    f"{k['env_steps_redone']} | {ms(k['restart_to_first_step_s'])} | {ms(k['stop_commit_s'])} | "
                    f"{k['grace_window']} |")
    return "\n".join(rows)


def resummarize(out: Path) -> int:
    """Recompute every verdict, the summary and the table of an existing result file (no cluster needed); drops
    the per-step events `verdict` does not read."""
    result = json.loads(out.read_text())
    for t in result.get("trials", []):
        if isinstance(t["notes"], dict):  # files written before faults_per_trial: one fault per trial
            t["notes"] = [t["notes"]] if t["kind"] not in ("reference", "timeout") else []
        t["events"] = compact_events(t["events"])
        t["verdict"] = verdict(t, result["reference"]["fingerprint"])
    result.update(summary=summarize(result.get("trials", [])))
    result["table_md"] = table(result["summary"])
    out.write_text(json.dumps(result, indent=1, default=str))
    print(result["table_md"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials-per-kind", type=int, default=1)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--seed", type=int, default=0, help="the fault schedule's seed (and the run's)")
    p.add_argument("--args", default=Settings().overrides, help="hydra overrides of every run")
    p.add_argument("--also", default="", help="hydra overrides added to --args (e.g. replay.codec=lz4)")
    p.add_argument("--max-delay-s", type=float, default=Settings().max_delay_s)
    p.add_argument("--faults-per-trial", type=int, default=Settings().faults_per_trial,
                   help="faults delivered to one run, one per attempt (second_writer: 1)")
    p.add_argument("--fault-after-steps", type=int, default=Settings().fault_after_steps,
                   help="no fault before a commit holds this many env steps (restore cost at a large buffer)")
    p.add_argument("--trial-timeout-s", type=float, default=Settings().timeout_s)
    p.add_argument("--stop-by", default="", help="UTC HH:MM after which no new trial starts")
    p.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "r2i-chaos"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "chaos.json"))
    p.add_argument("--summarize-only", action="store_true", help="recompute verdicts and table of --out")
    p.add_argument("--s3", action="store_true", help="durable stores in a bucket of a local S3 server (moto)")
    p.add_argument("--append", action="store_true",
                   help="add trials to --out, reusing its reference run (same --args and --seed only)")
    a = p.parse_args(argv)
    if a.summarize_only:
        return resummarize(Path(a.out))
    kinds = [k for k in a.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    if a.s3 and set(kinds) & set(LOCAL_ONLY):
        p.error(f"--s3: {sorted(set(kinds) & set(LOCAL_ONLY))} need a filesystem durable store; pass --kinds "
                f"without them")
    a.args = f"{a.args} {a.also}".strip()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if a.s3:
            from tests.s3_server import moto  # a development harness, like this one

            url = stack.enter_context(moto(root / "moto_server.log", buckets=(S3_BUCKET,)))
            a.args = f"{a.args} cluster.durable=s3://{S3_BUCKET}/sweeps"
            print(f"S3 server {url}: durable stores under s3://{S3_BUCKET}/sweeps", flush=True)
        return _run(a, p, kinds, root)


def _run(a: argparse.Namespace, p: argparse.ArgumentParser, kinds: list[str], root: Path) -> int:
    os.environ["R2I_RUN_ROOT"] = str(root / "runs")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax-cache"))  # shared by every job
    stop_by = None
    if a.stop_by:
        hh, mm = map(int, a.stop_by.split(":"))
        now = dt.datetime.now(dt.UTC)
        at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        stop_by = (at + dt.timedelta(days=1) if at <= now else at).timestamp()  # a time past today: tomorrow's
    s = Settings(seed=a.seed, overrides=a.args, max_delay_s=a.max_delay_s, faults_per_trial=a.faults_per_trial,
                 timeout_s=a.trial_timeout_s, fault_after_steps=a.fault_after_steps)
    rng = random.Random(a.seed)
    code = code_digest()
    result = {"machine": {"cores": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "code_digest": code,
              "settings": {"exp": s.exp, "seed": s.seed, "overrides": s.overrides, "max_delay_s": s.max_delay_s,
                           "faults_per_trial": s.faults_per_trial, "fault_after_steps": s.fault_after_steps,
                           "trials_per_kind": a.trials_per_kind, "kinds": kinds}}
    trials: list[dict] = []
    if a.append:
        old = json.loads(Path(a.out).read_text())
        if (old["settings"]["overrides"], old["settings"]["seed"]) != (s.overrides, s.seed):
            p.error(f"--append: {a.out} was run with --args {old['settings']['overrides']!r} --seed "
                    f"{old['settings']['seed']}, not {s.overrides!r} --seed {s.seed}")
        if old.get("code_digest", code) != code:
            p.error(f"--append: {a.out} was run on other code (digest {old['code_digest']}, now {code}): its "
                    "reference run does not stand for this code; start a new file")
        rng.seed(f"{a.seed}/{len(old.get('trials', []))}")  # another fault schedule than the first run's
        result, trials = old, old.get("trials", [])
        result.setdefault("sessions", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                  "kinds": kinds, "trials_per_kind": a.trials_per_kind,
                                                  "faults_per_trial": s.faults_per_trial})
        ref = result["reference"]
    else:
        print(f"reference run (uninterrupted, same submission path): {s.overrides}", flush=True)
        ref = run_trial("reference", 0, s, rng)
        if ref.get("state") != "done" or "fingerprint" not in ref:
            raise ChaosError(f"the reference run did not finish: {ref.get('error') or ref.get('run_error')}")
        result["reference"] = {k: ref[k] for k in ("sweep", "job", "wall_s", "fingerprint")}
    schedule = [(k, i) for i in range(a.trials_per_kind) for k in kinds]
    for kind, i in schedule:
        if stop_by is not None and time.time() > stop_by:
            result["stopped_early"] = f"--stop-by {a.stop_by} reached with {len(trials)} trials"
            break
        now = code_digest()
        if now != code:
            result["stopped_early"] = (f"the code changed after {len(trials)} trials (digest {code} -> {now}); "
                                       "run chaos from a worktree nobody edits")
            print(result["stopped_early"], flush=True)
            break
        rec = run_trial(kind, i, s, rng)
        rec["verdict"] = verdict(rec, ref["fingerprint"])
        v = rec["verdict"]
        print(f"{kind}#{i}: {rec.get('state')} identical={v['identical']} interruptions={v['interruptions']} "
              f"lost={v['lost_steps']} redone={v['redone_steps']} diff={v['differences']} "
              f"err={v['error']} ({rec['wall_s']} s)", flush=True)
        trials.append(rec)
        result.update(trials=trials, summary=summarize(trials))
        result["table_md"] = table(result["summary"])
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    if trials:
        print(result["table_md"])
    Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
