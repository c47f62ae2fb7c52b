"""The ggml libraries shipped beside libllama, opened as the very copies libllama mapped."""

from __future__ import annotations

import ctypes
from pathlib import Path

from daemon.engine.native.llama import init_backend, lc


def mapped_copy(lib_dir: Path, stem: str) -> Path | None:
    """The file of `lib{stem}.so*` in lib_dir that this process has already mapped (Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = Path(line.split(maxsplit=5)[-1]) if line.count(" ") >= 5 else None
        if path is not None and path.parent == lib_dir and path.name.startswith(f"lib{stem}.so"):
            return path
    return None


def ggml_library(stem: str) -> ctypes.CDLL | None:
    """A ggml library shipped next to libllama (`ggml-base`, `ggml-rpc` ...), or None when
    this build lacks it; the backends are initialised first.

    A wheel stores `libggml-base.so`, `.so.0` and `.so.0.25.3` as three separate files (wheels
    have no symlinks), and the loader maps each file apart: opening `libggml-base.so` beside
    libllama's `libggml-base.so.0` gives a second copy with its own globals (abort callback,
    RPC connections). So the copy libllama already mapped is the one to open."""
    init_backend()
    lib_dir = Path(lc.__file__).parent / "lib"
    mapped = mapped_copy(lib_dir, stem)
    if mapped is not None:
        return ctypes.CDLL(str(mapped))
    for name in (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
        if (lib_dir / name).exists():
            return ctypes.CDLL(str(lib_dir / name))
    return None
