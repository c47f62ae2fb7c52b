"""ggml's RPC backend through ctypes (the bindings do not wrap it): remote devices for the
daemon, the server for `edged rpc-worker`, and the abort hook that keeps a lost worker from
killing the daemon. Needs a llama-cpp-python built with CMAKE_ARGS="-DGGML_RPC=on"."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from daemon.engine.errors import LoadFailed
from daemon.engine.native.libfiles import ggml_library

log = logging.getLogger("edged.rpc")

RPC_MISSING = (
    "this llama-cpp-python was built without RPC; reinstall it with "
    'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
    "--no-binary llama-cpp-python llama-cpp-python==0.3.36 (README: Beyond one machine)"
)
_DEV_CPU, _DEV_GPU, _DEV_IGPU = 0, 1, 2  # enum ggml_backend_dev_type
_abort_hooks: list[object] = []  # keeps the ctypes callback alive


@cache
def _ggml() -> ctypes.CDLL:
    """libggml-base: the device API and the abort callback (argtypes declared once)."""
    base = ggml_library("ggml-base")
    assert base is not None, "llama-cpp-python ships libggml-base"
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for fn, args, res in (
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_backend_reg", [vp], vp),
        ("ggml_backend_reg_name", [vp], ctypes.c_char_p),
        ("ggml_backend_reg_dev_count", [vp], sz),
        ("ggml_backend_reg_dev_get", [vp, sz], vp),
        ("ggml_set_abort_callback", [vp], vp),
    ):
        f = getattr(base, fn)
        f.argtypes, f.restype = args, res
    return base


@cache
def _registry() -> ctypes.CDLL:
    """libggml: the process-wide device list."""
    reg = ggml_library("ggml")
    assert reg is not None, "llama-cpp-python ships libggml"
    reg.ggml_backend_dev_count.argtypes, reg.ggml_backend_dev_count.restype = [], ctypes.c_size_t
    reg.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    reg.ggml_backend_dev_get.restype = ctypes.c_void_p
    return reg


def _all_devices() -> list[int]:
    reg = _registry()
    return [reg.ggml_backend_dev_get(i) for i in range(reg.ggml_backend_dev_count())]


def backend_names() -> list[str]:
    """The ggml backends this build registered (`CPU`, `CUDA`, `Metal`, `Vulkan`, `RPC`...)."""
    reg = _registry()
    reg.ggml_backend_reg_count.argtypes, reg.ggml_backend_reg_count.restype = [], ctypes.c_size_t
    reg.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    reg.ggml_backend_reg_get.restype = ctypes.c_void_p
    g = _ggml()
    return [
        (g.ggml_backend_reg_name(reg.ggml_backend_reg_get(i)) or b"").decode()
        for i in range(reg.ggml_backend_reg_count())
    ]


def local_devices() -> list[tuple[str, Device]]:
    """Every local device with its kind (`cpu`, `gpu`, `igpu`), RPC devices left out."""
    g = _ggml()
    kinds = {_DEV_CPU: "cpu", _DEV_GPU: "gpu", _DEV_IGPU: "igpu"}
    out = []
    for ptr in _all_devices():
        if g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(ptr)) == b"RPC":
            continue
        out.append((kinds.get(g.ggml_backend_dev_type(ptr), "other"), _device(ptr)))
    return out


@cache
def _rpc() -> ctypes.CDLL | None:
    lib = ggml_library("ggml-rpc")
    if lib is None:
        return None
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_rpc_add_server.restype = vp
    lib.ggml_backend_rpc_start_server.argtypes = [ctypes.c_char_p, ctypes.c_char_p, sz, sz, vp]
    lib.ggml_backend_rpc_start_server.restype = None
    return lib


def rpc_available() -> bool:
    """Whether this llama-cpp-python was built with ggml's RPC backend."""
    return _rpc() is not None


@dataclass(frozen=True)
class Device:
    """One ggml backend device: a local GPU or a worker's device reached over RPC."""

    ptr: int
    name: str
    description: str
    free: int
    total: int


def _device(ptr: int) -> Device:
    g = _ggml()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    g.ggml_backend_dev_memory(ptr, ctypes.byref(free), ctypes.byref(total))
    return Device(
        ptr,
        (g.ggml_backend_dev_name(ptr) or b"").decode(),
        (g.ggml_backend_dev_description(ptr) or b"").decode(),
        free.value,
        total.value,
    )


def local_offload_devices() -> list[Device]:
    """The local devices llama.cpp offloads to by default: GPUs, else integrated GPUs."""
    g = _ggml()
    by_type: dict[int, list[Device]] = {_DEV_GPU: [], _DEV_IGPU: []}
    for ptr in _all_devices():
        kind = g.ggml_backend_dev_type(ptr)
        reg_name = g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(ptr))
        if kind in by_type and reg_name != b"RPC":
            by_type[kind].append(_device(ptr))
    return by_type[_DEV_GPU] or by_type[_DEV_IGPU]


def rpc_add_server(endpoint: str) -> list[Device]:
    """Connect to an RPC worker and return its devices (they are cached per endpoint
    string by ggml). The worker must be reachable: ggml aborts when it is not."""
    lib = _rpc()
    if lib is None:
        raise RuntimeError(RPC_MISSING)
    reg = lib.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise LoadFailed(f"RPC worker {endpoint} offers no device")
    g = _ggml()
    n = g.ggml_backend_reg_dev_count(reg)
    return [_device(g.ggml_backend_reg_dev_get(reg, i)) for i in range(n)]


def rpc_start_server(endpoint: str, cache_dir: str | None, n_threads: int) -> None:
    """Serve this machine's devices (accelerators, else the CPU) to RPC clients; blocks for
    good, or returns when the endpoint cannot be bound."""
    lib = _rpc()
    if lib is None:
        raise RuntimeError(RPC_MISSING)
    g = _ggml()
    devs = [d.ptr for d in local_offload_devices()]
    if not devs:
        devs = [p for p in _all_devices() if g.ggml_backend_dev_type(p) == _DEV_CPU][:1]
    arr = (ctypes.c_void_p * len(devs))(*devs)
    cdir = cache_dir.encode() if cache_dir else None
    lib.ggml_backend_rpc_start_server(endpoint.encode(), cdir, n_threads, len(devs), arr)


_ABORT_CB = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


def set_abort_hook(hook: Callable[[str], bool]) -> None:
    """Call `hook(message)` where ggml would abort the process. When it returns True the
    aborting thread is parked for good instead (ggml's RPC client aborts on a lost worker;
    the daemon gives up that thread and its model, and lives on)."""

    def on_abort(message: bytes | None) -> None:
        text = (message or b"").decode("utf-8", "replace").strip()
        try:
            park = hook(text)
        except Exception:  # an exception cannot cross into C; abort as ggml would
            log.exception("the ggml abort hook failed")
            park = False
        if park:
            threading.Event().wait()  # never returns: ggml would call abort() next
        log.critical("ggml aborts: %s", text)

    cb = _ABORT_CB(on_abort)
    _abort_hooks.append(cb)
    _ggml().ggml_set_abort_callback(ctypes.cast(cb, ctypes.c_void_p))
