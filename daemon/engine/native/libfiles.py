"""Which file of a shared library this process has already mapped (see `ggml_library`)."""

from __future__ import annotations

from pathlib import Path


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
