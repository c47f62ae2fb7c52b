"""Durations as people write them: 300, "300", "90s", "5m", "1h", "250ms"."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
HINT = "a number of seconds or a duration like '90s', '5m', '1h'"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a duration string; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(HINT)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError(HINT)


# A Settings / request field that takes seconds also takes "5m".
Seconds = Annotated[float, BeforeValidator(parse_duration)]
