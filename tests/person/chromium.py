"""Debian's chromium, headless, driven by Playwright (never `playwright install`): what the
chat page tests run their real browser with."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require() -> object:
    """Playwright's sync API, or skip the calling module when it or chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium)",
            allow_module_level=True,
        )
    return sync_api


@contextmanager
def launched(sync_api: object) -> Iterator[object]:
    """A headless chromium, closed on exit."""
    with sync_api.sync_playwright() as p:  # type: ignore[attr-defined]
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
