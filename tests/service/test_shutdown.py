"""SIGTERM: new requests get 503, running streams finish, then the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import start_server, stop_server
from tests.service.conftest import COUNTING, SMALL, assert_error, sse_events


def _stream(url: str, max_tokens: int, events: list[Any], started: threading.Event) -> None:
    body = {
        "prompt": COUNTING,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        for event in sse_events(r):
            events.append(event)
            started.set()


def test_sigterm_drains_a_running_stream_then_exits_zero(tmp_path: Path) -> None:
    srv = start_server(tmp_path, *SMALL, "--parallel", "2", "--drain-timeout", "240")
    try:
        events: list[Any] = []
        started = threading.Event()
        t = threading.Thread(target=_stream, args=(srv.url, 64, events, started))
        t.start()
        assert started.wait(120)
        srv.proc.send_signal(signal.SIGTERM)
        # The flag flips within a moment; from then on every new request is refused.
        deadline = time.monotonic() + 10
        while (r := httpx.get(f"{srv.url}/v1/models", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert_error(r, 503, "unavailable")
        assert int(r.headers["retry-after"]) > 0
        assert_error(httpx.get(f"{srv.url}/health", timeout=10), 503)
        t.join(300)
        assert events[-1] == "[DONE]"
        usage = events[-2]["usage"]
        assert usage["completion_tokens"] == 64, events[-2]
        text = "".join(e["choices"][0]["text"] for e in events[:-2] if e["choices"])
        assert text.startswith(" 7, 8, 9"), text
        assert srv.proc.wait(60) == 0
        assert "draining 1 request" in srv.log.read_text()
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)


def test_drain_timeout_bounds_the_wait(tmp_path: Path) -> None:
    srv = start_server(tmp_path, *SMALL, "--parallel", "1", "--drain-timeout", "1")
    try:
        events: list[Any] = []
        started = threading.Event()
        t = threading.Thread(target=_stream, args=(srv.url, 200, events, started), daemon=True)
        t.start()
        assert started.wait(120)
        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        assert time.monotonic() - began < 20
        t.join(30)
        # The long stream was cut with one error event, not torn down mid-chunk.
        assert not t.is_alive() and "[DONE]" not in events
        assert events[-1]["error"]["code"] == "unavailable", events[-1]
        assert "drain timeout" in srv.log.read_text()
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)
