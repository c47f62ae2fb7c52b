"""Helpers for the service suite: small real servers, SSE reading, the error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

# Small and single-threaded: these servers share two cores with the rest of the suite.
SMALL = ("--threads", "1", "--ctx-size", "256")
COUNTING = "1, 2, 3, 4, 5, 6,"  # greedy SmolLM2 keeps counting: no early end of text


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` in the one error shape (with `code` if given)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def sse_events(r: httpx.Response) -> Iterator[Any]:
    """Decoded `data:` payloads of an SSE response; `[DONE]` comes through as the string."""
    for line in r.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            yield data if data == "[DONE]" else json.loads(data)


def health(url: str) -> dict[str, Any]:
    """The /health body (200 or 503)."""
    return httpx.get(f"{url}/health", timeout=30).json()
