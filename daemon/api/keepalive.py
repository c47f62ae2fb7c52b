"""Ollama-style `keep_alive` on a request: how long its model stays loaded once idle."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

from daemon.durations import parse_duration


def parse_keep_alive(value: Any) -> float | None:
    """Seconds from a number or a duration such as "5m", "90s", "1h"; negative = forever."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ValueError("keep_alive is a number of seconds or a duration like '5m'") from None
    return None if seconds < 0 else seconds


KeepAlive = Annotated[float | None, BeforeValidator(parse_keep_alive)]


def keep_alive_arg(fields_set: set[str], value: float | None) -> float | str | None:
    """The registry argument: "default" unless the request set keep_alive."""
    return value if "keep_alive" in fields_set else "default"
