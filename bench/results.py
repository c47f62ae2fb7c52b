"""What the bench scripts share around a run: waiting for a server, writing RESULTS.md."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def wait_healthy(url: str, timeout: float = 300.0) -> None:
    """Return once `url`/health answers 200 (a loaded 2-core machine starts slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy within {timeout:.0f} s")


def write_section(body: str, begin: str, end: str, heading: str, md_path: Path = RESULTS) -> None:
    """Replace the text between the `begin` and `end` markers of `md_path` with `body`, or
    append it under `heading` the first time (one command rewrites its own section)."""
    text = md_path.read_text() if md_path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    md_path.write_text(text)
