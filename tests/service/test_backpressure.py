"""Admission bound (429, Retry-After, accepted requests complete) and the request timeout."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import start_server, stop_server
from tests.service.conftest import COUNTING, SMALL, assert_error, health, sse_events


def test_overload_gives_429_and_accepted_requests_complete(tmp_path: Path) -> None:
    srv = start_server(tmp_path, *SMALL, "--parallel", "1", "--max-queue", "1")
    try:
        body = {"prompt": COUNTING, "max_tokens": 24, "temperature": 0}

        def one(_: int) -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/completions", json=body, timeout=300)

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(one, range(8)))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) + len(refused) == 8, [r.status_code for r in responses]
        assert len(ok) >= 2 and refused  # one slot plus one queue place, the rest refused
        for r in refused:
            assert_error(r, 429, "overloaded")
            assert int(r.headers["retry-after"]) >= 1
        for r in ok:
            choice = r.json()["choices"][0]
            assert choice["finish_reason"] == "length"
            assert r.json()["usage"]["completion_tokens"] == 24
        h = health(srv.url)["models"][0]
        assert h["busy_slots"] == 0 and h["queued"] == 0
    finally:
        stop_server(srv)


def test_request_timeout_is_504_and_frees_the_slot(tmp_path: Path) -> None:
    srv = start_server(tmp_path, *SMALL, "--parallel", "1", "--request-timeout", "0.5")
    try:
        body: dict[str, Any] = {"prompt": COUNTING, "max_tokens": 200, "temperature": 0}
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)
        assert_error(r, 504, "timeout")
        with httpx.stream(
            "POST", f"{srv.url}/v1/completions", json={**body, "stream": True}, timeout=120
        ) as r:
            assert r.status_code == 200
            events = list(sse_events(r))
        assert events[-1]["error"]["code"] == "timeout", events[-1]
        assert "[DONE]" not in events
        h = health(srv.url)["models"][0]
        assert h["busy_slots"] == 0 and h["queued"] == 0
    finally:
        stop_server(srv)


def test_a_request_that_can_never_be_served_is_a_400(tmp_path: Path) -> None:
    """A chat naming a model and a safety model beside the default model, under a cap of two
    loaded models: no retry can help, so the answer is a 400 that names the cap to raise
    (it used to be a 503 "retry shortly", every time). The daemon serves on."""
    from daemon.config import embedded_model_path

    models = tmp_path / "models"
    models.mkdir()
    for name in ("main", "guard"):
        (models / f"{name}.gguf").symlink_to(embedded_model_path())
    srv = start_server(
        tmp_path,
        *SMALL,
        "--parallel",
        "1",
        "--models-dir",
        str(models),
        "--max-loaded-models",
        "2",
    )
    try:
        body = {
            "model": "main",
            "safety_model": "guard",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
        }
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
        err = assert_error(r, 400)
        assert "--max-loaded-models" in err["message"] and "retry" not in err["message"]
        r = httpx.post(
            f"{srv.url}/v1/chat/completions", json={**body, "safety_model": None}, timeout=300
        )
        assert r.status_code == 200, r.text
        assert health(srv.url)["status"] == "ok"
    finally:
        stop_server(srv)
