"""The only module of quantize/ that touches llama.cpp (llama-cpp-python's low-level bindings)."""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable

import llama_cpp

from quantize.errors import QuantizationFailed, UnknownType

# llama.cpp logs "[  12/ 272] blk.0.attn_q.weight - [...], type = f32, ..." per tensor.
_PROGRESS = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
_log_lock = threading.Lock()


def ftype(name: str) -> int:
    """llama.cpp's LLAMA_FTYPE_* value for a type name like 'Q4_K_M' or 'F16'."""
    attr = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
    value = getattr(llama_cpp, attr, None)
    if value is None:
        raise UnknownType(f"llama.cpp {llama_cpp.__version__} has no file type {name}")
    return int(value)


def quantize_file(
    src: bytes,
    dst: bytes,
    file_type: int,
    threads: int,
    on_progress: Callable[[int, int, str], None] | None = None,
    allow_requantize: bool = False,
) -> None:
    """Run llama_model_quantize; on_progress(done, total, tensor) is fed from llama.cpp's log."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads
    params.allow_requantize = allow_requantize

    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        m = _PROGRESS.search(text or b"")
        if m and on_progress is not None:
            on_progress(int(m.group(1)), int(m.group(2)), m.group(3).decode(errors="replace"))

    # The log callback is process-global: hold it only for the duration of the call,
    # then hand logging back to llama-cpp-python's own handler.
    with _log_lock:
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
        try:
            rc = llama_cpp.llama_model_quantize(src, dst, ctypes.byref(params))
        finally:
            from llama_cpp import _logger

            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0:
        raise QuantizationFailed(
            f"llama_model_quantize returned {rc} for {src.decode(errors='replace')}"
        )
