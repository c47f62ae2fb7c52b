"""Fixtures of the template tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_clock: strftime_now reads the real clock")
