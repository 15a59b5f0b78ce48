"""The device fingerprint: the hardware facts that decide the bits of XLA's results. One definition, read by the
training loop (each commit carries it; a resume on other hardware warns) and by the job (each attempt's record in
state.json; an attempt on other hardware warns). Free of jax at import: the job takes it before the entry imports
jax, and then knows only the host's facts.

Two spellings are kept readable: commits carry the short text `backend:kinds:xN:cores=C` (what they always
carried), attempt records a JSON object with `machine`, `cpu`, `cpus`, `gpus` and, once jax runs, `jax_devices`."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DeviceFingerprint:
    """None: not known to whoever took it (the job before jax, a commit without the host's CPU model)."""

    machine: str | None = None  # CPU architecture
    cpu: str | None = None  # CPU model name (XLA's CPU code targets the host's instruction set)
    cores: int | None = None  # usable CPU cores (thread pools split work by them)
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES
    backend: str | None = None  # jax's default backend
    kinds: tuple[str, ...] | None = None  # jax device kinds, sorted
    count: int | None = None  # jax devices

    def differences(self, other: DeviceFingerprint) -> list[str]:
        """Names of the facts both fingerprints know and that differ: [] is the same hardware, as far as known."""
        return [f.name for f in fields(self) if None not in (getattr(self, f.name), getattr(other, f.name))
                and getattr(self, f.name) != getattr(other, f.name)]

    def to_text(self) -> str:
        """The commit's spelling (needs the jax facts)."""
        if None in (self.backend, self.kinds, self.count, self.cores):
            raise ValueError(f"device fingerprint {self} lacks the jax facts a commit's 'device' holds")
        return f"{self.backend}:{','.join(self.kinds)}:x{self.count}:cores={self.cores}"

    def to_json(self) -> dict[str, Any]:
        """The attempt record's spelling: the host's facts and, when known, jax's device kinds (the job takes it
        before jax runs; backend and count are the commit's to carry)."""
        out: dict[str, Any] = {"machine": self.machine, "cpu": self.cpu, "cpus": self.cores, "gpus": self.gpus}
        if self.kinds is not None:
            out["jax_devices"] = list(self.kinds)
        return out

    @staticmethod
    def from_json(obj: str | dict[str, Any]) -> DeviceFingerprint:
        """Either spelling: a commit's text or an attempt's object."""
        if isinstance(obj, str):
            try:
                backend, kinds, count, cores = obj.rsplit(":", 3)
                if not (count.startswith("x") and cores.startswith("cores=")):
                    raise ValueError
                return DeviceFingerprint(cores=int(cores[6:]), backend=backend, kinds=tuple(kinds.split(",")),
                                         count=int(count[1:]))
            except ValueError:
                raise ValueError(f"device fingerprint {obj!r} is not 'backend:kinds:xN:cores=C'") from None
        if not isinstance(obj, dict):
            raise ValueError(f"device fingerprint {obj!r} is neither a commit's text nor an attempt's object")
        kinds = obj.get("jax_devices")
        return DeviceFingerprint(machine=obj.get("machine"), cpu=obj.get("cpu"), cores=obj.get("cpus"),
                                 gpus=obj.get("gpus"), kinds=None if kinds is None else tuple(kinds))


def _cpu_model() -> str:
    try:
        return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "")
    except OSError:
        return ""


def device_fingerprint() -> DeviceFingerprint:
    """This process's hardware; the jax facts only when jax is imported already (it is never imported here)."""
    jax = sys.modules.get("jax")
    facts: dict[str, Any] = {}
    if jax is not None:
        facts = {"backend": jax.default_backend(), "kinds": tuple(sorted({d.device_kind for d in jax.devices()})),
                 "count": jax.device_count()}
    return DeviceFingerprint(machine=platform.machine(), cpu=_cpu_model(), cores=len(os.sched_getaffinity(0)),
                             gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""), **facts)
