"""llama.cpp's and libmtmd's log lines routed into `logging`.

The callback type is declared here with ctypes (the signature of llama.h's
`llama_log_callback`, which ggml's and mtmd's log setters share) so that this module needs
no llama_cpp import of its own.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

# typedef void (*llama_log_callback)(enum ggml_log_level level, const char * text, void * user)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


def log_callback(logger: logging.Logger) -> Any:
    """A llama.cpp log callback writing to `logger` (keep a reference: ctypes frees it)."""

    @LOG_CALLBACK
    def callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        # llama.cpp is chatty at INFO (clip and mtmd print every hyperparameter): keep its
        # lines at DEBUG unless they are problems.
        py_level = _LEVELS.get(level, logging.DEBUG)
        if py_level < logging.WARNING:
            py_level = logging.DEBUG
        if logger.isEnabledFor(py_level):
            logger.log(py_level, "%s", text.decode("utf-8", "replace").rstrip())

    return callback
