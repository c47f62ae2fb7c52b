"""`edged doctor`: what this installation can run on, and what to do when a GPU goes unused.

It reports the llama.cpp backends the installed llama-cpp-python was built with, the
devices ggml sees (with free memory), the CPU features llama.cpp uses, the AMX workaround
in force, and, when the machine has a GPU the build cannot use, the one command that
rebuilds llama-cpp-python for it. `gather` reads the machine; `diagnose` is a pure function
of what was read (tested on made-up machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

LLAMA_PIN = "0.3.36"
# Flags of llama_print_system_info that decide which CPU kernels run.
_CPU_FLAGS = (
    "AVX",
    "AVX2",
    "AVX512",
    "AVX512_VNNI",
    "AVX512_BF16",
    "FMA",
    "F16C",
    "NEON",
    "ARM_FMA",
    "AMX_INT8",
    "SVE",
)
_REBUILD = {
    "CUDA": "-DGGML_CUDA=on",
    "Metal": "-DGGML_METAL=on",
    "Vulkan": "-DGGML_VULKAN=on",
}


@dataclass(frozen=True)
class DeviceFact:
    """One device ggml sees."""

    kind: str  # cpu, gpu, igpu
    name: str
    description: str
    free: int
    total: int


@dataclass(frozen=True)
class Facts:
    """What `gather` read off this machine."""

    backends: list[str]
    devices: list[DeviceFact]
    cpu_flags: dict[str, bool]
    amx: bool
    extra_buffers: bool
    nvidia_gpu: bool = False
    apple_silicon: bool = False
    other_gpu: bool = False  # an AMD or Intel GPU (Vulkan)


@dataclass
class Report:
    """What `doctor` says."""

    facts: Facts
    notes: list[str] = field(default_factory=list)
    rebuild: str | None = None  # the command that rebuilds llama-cpp-python for the GPU here


def rebuild_command(flag: str) -> str:
    """The pip command that rebuilds the pinned llama-cpp-python with a GPU backend."""
    return (
        f'CMAKE_ARGS="{flag}" pip install --force-reinstall --no-cache-dir --no-deps '
        f"llama-cpp-python=={LLAMA_PIN}"
    )


def diagnose(facts: Facts) -> Report:
    """The report for these facts: which GPU backend is missing, and the command to fix it."""
    report = Report(facts)
    has = {b.lower() for b in facts.backends}
    wanted = None
    if facts.nvidia_gpu and "cuda" not in has:
        wanted = "CUDA"
    elif facts.apple_silicon and "metal" not in has:
        wanted = "Metal"
    elif facts.other_gpu and "vulkan" not in has and not facts.nvidia_gpu:
        wanted = "Vulkan"
    if wanted is not None:
        report.rebuild = rebuild_command(_REBUILD[wanted])
        report.notes.append(
            f"this machine has a GPU for {wanted}, but llama-cpp-python was built without it: "
            "models run on the CPU. Rebuild it in edged's venv with the command below "
            "(a CUDA build needs the CUDA toolkit and nvcc on PATH)."
        )
    gpus = [d for d in facts.devices if d.kind in ("gpu", "igpu")]
    if gpus:
        report.notes.append(
            "GPU devices are in use: pass --n-gpu-layers -1 (all layers) or a number to "
            "offload; --flash-attn pays on GPUs."
        )
    elif wanted is None:
        report.notes.append("no GPU here: models run on the CPU (--threads = physical cores).")
    if facts.amx:
        report.notes.append(
            "the CPU has AMX: llama.cpp's extra CPU buffers (AMX, weight repacking) are off by "
            "default, since the AMX kernels of llama.cpp 0.3.36 crash under virtualisation; "
            "--extra-buffers turns them on."
        )
    if not any(facts.cpu_flags.get(f) for f in ("AVX2", "NEON")):
        report.notes.append("the CPU lacks AVX2 (and NEON): expect slow CPU inference.")
    return report


def _cpu_flags() -> dict[str, bool]:
    from daemon.engine.native.llama import system_info

    info = system_info()
    flags: dict[str, bool] = {}
    for part in info.split("|"):
        name, _, value = part.strip().rpartition(" = ")
        name = name.rsplit(":", 1)[-1].strip()
        if name in _CPU_FLAGS:
            flags[name] = value.strip() == "1"
    return flags


def _nvidia_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def _other_gpu_present() -> bool:
    """An AMD (amdgpu/ROCm) or Intel render node that Vulkan could use."""
    drm = Path("/sys/class/drm")
    try:
        vendors = {
            (d / "device" / "vendor").read_text().strip()
            for d in drm.iterdir()
            if d.name.startswith("renderD")
        }
    except OSError:
        return False
    return bool(vendors & {"0x1002", "0x8086"})


def gather() -> Facts:
    """Read this machine and this build."""
    from daemon.engine.native.ggml_rpc import backend_names, local_devices
    from daemon.engine.native.llama import ModelOptions, cpu_has_amx

    devices = [
        DeviceFact(kind, d.name, d.description, d.free, d.total) for kind, d in local_devices()
    ]
    return Facts(
        backends=backend_names(),
        devices=devices,
        cpu_flags=_cpu_flags(),
        amx=cpu_has_amx(),
        extra_buffers=ModelOptions().use_extra_buffers(),
        nvidia_gpu=_nvidia_present(),
        apple_silicon=platform.system() == "Darwin" and platform.machine() == "arm64",
        other_gpu=_other_gpu_present(),
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def render(report: Report) -> str:
    """The report as a person reads it."""
    f = report.facts
    lines = [
        f"llama.cpp backends: {', '.join(f.backends) or 'none'}",
        "devices:",
        *(
            f"  {d.kind:<4} {d.name}: {d.description} ({_mib(d.free)} free of {_mib(d.total)})"
            for d in f.devices
        ),
        "cpu: "
        + " ".join(name for name in _CPU_FLAGS if f.cpu_flags.get(name))
        + f" ({os.cpu_count()} logical CPUs)",
        f"amx: {'yes' if f.amx else 'no'}; extra CPU buffers {'on' if f.extra_buffers else 'off'}",
        *(f"- {note}" for note in report.notes),
    ]
    if report.rebuild:
        lines += ["", report.rebuild]
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    report = diagnose(gather())
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(render(report))
    return 0


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor",
        help="backends, devices, CPU features, and how to use a GPU this build cannot",
        description="What this installation of edged can run on.",
    )
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_doctor)
