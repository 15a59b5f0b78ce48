"""The device fingerprint: one definition, both spellings written before it existed still read."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.device import DeviceFingerprint, device_fingerprint


def test_a_commits_text_reads_back_and_compares_on_what_both_know() -> None:
    committed = DeviceFingerprint.from_json("cpu:cpu:x1:cores=2")  # as commits have always carried it
    assert committed == DeviceFingerprint(cores=2, backend="cpu", kinds=("cpu",), count=1)
    assert committed.to_text() == "cpu:cpu:x1:cores=2"
    gpu = DeviceFingerprint.from_json("cuda:NVIDIA H100 80GB HBM3,NVIDIA A100:x2:cores=16")
    assert gpu.kinds == ("NVIDIA H100 80GB HBM3", "NVIDIA A100") and gpu.count == 2 and gpu.backend == "cuda"
    here = DeviceFingerprint(machine="x86_64", cpu="Some CPU", cores=2, gpus="", backend="cpu", kinds=("cpu",),
                             count=1)
    assert committed.differences(here) == [] and here.differences(committed) == []
    assert committed.differences(DeviceFingerprint(cores=4, backend="cpu")) == ["cores"]


def test_an_attempts_object_reads_back_and_the_job_does_not_see_a_difference_jax_alone_makes() -> None:
    old = {"machine": "x86_64", "cpu": "Some CPU", "cpus": 8, "gpus": "", "jax_devices": ["cpu"]}
    fp = DeviceFingerprint.from_json(old)
    assert fp.to_json() == old and fp.kinds == ("cpu",)
    before_jax = DeviceFingerprint.from_json({k: v for k, v in old.items() if k != "jax_devices"})
    assert before_jax.differences(fp) == []
    assert DeviceFingerprint.from_json({**old, "cpu": "Other CPU"}).differences(fp) == ["cpu"]


@pytest.mark.parametrize("bad", ["cpu", "cpu:cpu:1:2", "cpu:cpu:xN:cores=2", 3, None])
def test_a_malformed_fingerprint_is_an_error_naming_it(bad) -> None:
    with pytest.raises(ValueError, match="device fingerprint"):
        DeviceFingerprint.from_json(bad)


def test_without_jax_only_the_host_is_known_and_jax_is_not_imported() -> None:
    code = ("import sys; from agent.device import device_fingerprint; fp = device_fingerprint(); "
            "assert 'jax' not in sys.modules and fp.backend is None and fp.cores >= 1, fp")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_with_jax_the_text_is_what_commits_carry() -> None:
    import os

    import jax

    kinds = ",".join(sorted({d.device_kind for d in jax.devices()}))
    expected = f"{jax.default_backend()}:{kinds}:x{jax.device_count()}:cores={len(os.sched_getaffinity(0))}"
    assert device_fingerprint().to_text() == expected
