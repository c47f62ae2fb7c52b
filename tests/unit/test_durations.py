"""Durations (one parser for flags, settings and request fields) and pull's REPO[:QUANT]."""

from __future__ import annotations

import pytest

from daemon.api.keepalive import parse_keep_alive
from daemon.durations import parse_duration
from quantize.pull import pick_gguf, split_model_ref, split_parts


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(300, 300.0), ("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "", True, None, "1d"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_keep_alive_keeps_its_meaning() -> None:
    assert parse_keep_alive("5m") == 300.0
    assert parse_keep_alive(-1) is None  # negative: until evicted


def test_model_refs() -> None:
    assert split_model_ref("bartowski/X-GGUF:Q8_0") == ("bartowski/X-GGUF", "Q8_0")
    assert split_model_ref("bartowski/X-GGUF") == ("bartowski/X-GGUF", "Q4_K_M")
    assert split_model_ref("owner/name", "Q4_1") == ("owner/name", "Q4_1")


def test_split_files_pick_the_first_part() -> None:
    files = (
        "Q4_K_M/M-Q4_K_M-00002-of-00002.gguf",
        "Q4_K_M/M-Q4_K_M-00001-of-00002.gguf",
        "M-Q8_0.gguf",
    )
    first = pick_gguf(files, "Q4_K_M")
    assert first == "Q4_K_M/M-Q4_K_M-00001-of-00002.gguf"
    assert split_parts(files, first) == sorted(files[:2])
    assert split_parts(files, "M-Q8_0.gguf") == ["M-Q8_0.gguf"]
