"""`edged doctor`'s decisions on made-up machines, and its report on this one."""

from __future__ import annotations

import json
import subprocess
import sys

from daemon.cli.doctor import DeviceFact, Facts, diagnose, render
from tests.conftest import ROOT

CPU = DeviceFact("cpu", "CPU", "some CPU", 8 << 30, 16 << 30)
GPU = DeviceFact("gpu", "CUDA0", "NVIDIA RTX 4060 Laptop GPU", 7 << 30, 8 << 30)
AVX2 = {"AVX": True, "AVX2": True, "FMA": True}


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "backends": ["CPU"],
        "devices": [CPU],
        "cpu_flags": AVX2,
        "amx": False,
        "extra_buffers": True,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_an_nvidia_gpu_without_cuda_gets_the_rebuild_command() -> None:
    r = diagnose(facts(nvidia_gpu=True))
    assert r.rebuild is not None and "-DGGML_CUDA=on" in r.rebuild
    assert "llama-cpp-python==0.3.36" in r.rebuild and "--force-reinstall" in r.rebuild
    assert any("CUDA" in n and "CPU" in n for n in r.notes)
    assert r.rebuild in render(r)


def test_apple_silicon_without_metal_gets_metal() -> None:
    r = diagnose(facts(apple_silicon=True))
    assert r.rebuild is not None and "-DGGML_METAL=on" in r.rebuild


def test_amd_or_intel_gpus_get_vulkan() -> None:
    r = diagnose(facts(other_gpu=True))
    assert r.rebuild is not None and "-DGGML_VULKAN=on" in r.rebuild


def test_a_cuda_build_on_an_nvidia_machine_needs_nothing() -> None:
    r = diagnose(facts(nvidia_gpu=True, backends=["CPU", "CUDA"], devices=[CPU, GPU]))
    assert r.rebuild is None
    assert any("--n-gpu-layers" in n for n in r.notes)
    assert "CUDA0" in render(r) and "7,168 MiB free of 8,192 MiB" in render(r)


def test_amx_and_old_cpus_are_named() -> None:
    r = diagnose(facts(amx=True, extra_buffers=False, cpu_flags={"AVX": True}))
    text = render(r)
    assert "AMX" in text and "--extra-buffers" in text and "extra CPU buffers off" in text
    assert any("AVX2" in n for n in r.notes)


def test_doctor_on_this_cpu_build() -> None:
    """The real run: this CPU-only build names the CPU backend, its device and the AMX state;
    with no GPU on the machine there is nothing to rebuild."""
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    report = json.loads(out)
    f = report["facts"]
    assert "CPU" in f["backends"]
    assert any(d["kind"] == "cpu" and d["total"] > 0 for d in f["devices"])
    assert isinstance(f["amx"], bool) and isinstance(f["extra_buffers"], bool)
    assert f["extra_buffers"] == (not f["amx"])  # the AMX workaround's default
    if not (f["nvidia_gpu"] or f["apple_silicon"] or f["other_gpu"]):
        assert report["rebuild"] is None
    text = subprocess.run(
        [sys.executable, "-m", "daemon", "doctor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert text.startswith("llama.cpp backends: ") and "amx: " in text
