"""A check on the ctypes parameter structs edged fills before llama.cpp or libmtmd reads them."""

from __future__ import annotations

import ctypes
from typing import TypeVar

_S = TypeVar("_S", bound=ctypes.Structure)


def checked(params: _S) -> _S:
    """`params` as filled, refused when a name set on it is no field of its C struct: ctypes
    keeps any attribute silently, and 0.3.36 dropped fields older bindings had (use_mmap
    became load_mode), so a stale name would change nothing and say nothing."""
    stray = vars(params)
    if stray:
        raise TypeError(f"{type(params).__name__} has no field {', '.join(sorted(stray))}")
    return params
