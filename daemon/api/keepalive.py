"""Ollama-style `keep_alive` on a request: how long its model stays loaded once idle."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from a number or a duration such as "5m", "90s", "1h"; negative = forever."""
    if isinstance(value, bool):
        raise ValueError("keep_alive is a number of seconds or a duration like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError("keep_alive is a number of seconds or a duration like '5m'")
    return None if seconds < 0 else seconds


KeepAlive = Annotated[float | None, BeforeValidator(parse_keep_alive)]


def keep_alive_arg(fields_set: set[str], value: float | None) -> float | str | None:
    """The registry argument: "default" unless the request set keep_alive."""
    return value if "keep_alive" in fields_set else "default"
