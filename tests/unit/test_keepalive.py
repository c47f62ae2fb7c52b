"""Ollama-style keep_alive values."""

import pytest

from daemon.api.keepalive import parse_keep_alive


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0, 0.0),
        (-1, None),
        ("5m", 300.0),
        ("90s", 90.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("-1", None),
        ("12", 12.0),
    ],
)
def test_parse(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, None, [1]])
def test_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_keep_alive(value)
