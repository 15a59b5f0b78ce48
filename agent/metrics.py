"""Metrics: flat `a/b` keys to `metrics.jsonl` (deterministic rows only) and wandb (offline by default).

`metrics.jsonl` is part of what "exact resume" promises: its rows are a function of the trajectory, so wall-clock
figures go to `perf.jsonl` and wandb only, and on resume the file is cut back to the size it had at the commit.
Two copies of a job can share the file for a while (a stale copy runs until its next commit is fenced), and in a
deterministic run their rows are the same rows: each write first asks `owner_check` whether this process still owns
the run (a fenced copy raises and writes nothing more), and the owner cuts whatever it finds after its own rows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from agent.run_config import WandbConfig

log = logging.getLogger(__name__)


class Mean:
    """Running sums and counts per key; JSON round trip is exact (floats are written with repr)."""

    def __init__(self, sums: dict[str, float] | None = None, counts: dict[str, int] | None = None):
        self.sums, self.counts = dict(sums or {}), dict(counts or {})

    def add(self, row: dict[str, float]) -> None:
        for k, v in row.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        """The means since the last pop, then reset."""
        out = {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}
        self.sums, self.counts = {}, {}
        return out

    def to_json(self) -> dict:
        return {"sums": self.sums, "counts": self.counts}

    @classmethod
    def from_json(cls, d: dict) -> Mean:
        return cls(d["sums"], d["counts"])


class MetricsLog:
    """Append rows to `<log_dir>/metrics.jsonl` and `perf.jsonl`, mirrored to one wandb run per training run."""

    def __init__(self, log_dir: Path, cfg: WandbConfig, run_id: str, owner_check: Callable[[], None] = lambda: None):
        """`owner_check` raises when this process no longer owns the run (e.g. `Replay.check_writer`)."""
        self.dir, self.cfg, self.run_id, self.owner_check = log_dir, cfg, run_id, owner_check
        self.path = log_dir / "metrics.jsonl"
        self._f = self._perf = self._wandb = None
        self.bytes_written = 0

    def open(self, committed_bytes: int) -> None:
        """Open for appending after `committed_bytes` (rows written after the last commit are dropped)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < committed_bytes:
            log.warning("%s has %d bytes but the commit recorded %d: rows before the commit are missing",
                        self.path, size, committed_bytes)
        self._f = open(self.path, "ab")
        self._f.truncate(min(size, committed_bytes))
        self._f.seek(0, os.SEEK_END)
        self.bytes_written = self._f.tell()
        self._perf = open(self.dir / "perf.jsonl", "a")
        if self.cfg.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(id=self.run_id, resume="allow", mode=self.cfg.mode, dir=str(self.dir),
                                     project=self.cfg.project, entity=self.cfg.entity or None)

    def write(self, row: dict, perf: dict) -> None:
        line = (json.dumps(row, sort_keys=True) + "\n").encode()
        self.owner_check()
        if os.fstat(self._f.fileno()).st_size != self.bytes_written:
            log.warning("%s was changed by another copy of this run; its rows after byte %d are dropped",
                        self.path, self.bytes_written)
            self._f.truncate(self.bytes_written)
        self._f.write(line)
        self._f.flush()  # visible to `make status` at once; fsync waits for the commit
        self.bytes_written += len(line)
        self._perf.write(json.dumps({"env_steps": row["env_steps"], **perf}, sort_keys=True) + "\n")
        self._perf.flush()
        if self._wandb is not None:
            self._wandb.log({**row, **perf}, step=row["env_steps"])

    def log_media(self, env_steps: int, files: dict[str, Path]) -> None:
        """Send media files to wandb (videos: .mp4/.gif, images: .png) as `media/<kind>`; nothing when it is off.
        The files themselves stay where they are (`<run>/media/`)."""
        if self._wandb is None or not files:
            return
        import wandb

        items = {}
        for kind, path in files.items():
            suffix = Path(path).suffix.lstrip(".")
            items[f"media/{kind}"] = (wandb.Image(str(path)) if suffix == "png"
                                      else wandb.Video(str(path), format=suffix))
        self._wandb.log(items, step=env_steps)

    def flush(self) -> None:
        """Make every row so far durable before a commit names their byte count."""
        for f in (self._f, self._perf):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        for f in (self._f, self._perf):
            if f is not None:
                f.close()
        self._f = self._perf = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
