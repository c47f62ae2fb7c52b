"""Issue 11, API half: hang-ups cancel, bad fields are 400s naming them, nothing leaks paths."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import embedded_model_path
from tests.conftest import ROOT, free_port

# SmolLM2's end-of-text and end-of-turn tokens: banned, so a generation runs to its budget.
NO_EOS = {"0": -100, "1": -100, "2": -100}
LONG = 3000


def _post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, timeout=120)


def _error(r: httpx.Response, param: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"
    return err


# ---- a hang-up cancels ----------------------------------------------------------------------


def _busy(base_url: str) -> int:
    models = httpx.get(f"{base_url}/health", timeout=10).json()["models"]
    return sum(m["busy_slots"] + m["queued"] for m in models)


def _metric(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


HANG_UPS = [
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": LONG, "logit_bias": NO_EOS}),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": LONG,
            "logit_bias": NO_EOS,
        },
    ),
    ("/inference", {"prompt": "Once upon a time", "max_tokens": LONG, "logit_bias": NO_EOS}),
    (
        "/api/generate",
        {
            "request_id": "hang-up",
            "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",  # greedy SmolLM2 counts on and on
            "stream_response": False,
            "generation_config": {"do_sample": False, "max_new_tokens": LONG},
        },
    ),
]


@pytest.mark.parametrize("path,body", HANG_UPS, ids=[p for p, _ in HANG_UPS])
def test_hang_up_cancels_a_non_streamed_request(
    base_url: str, path: str, body: dict[str, Any]
) -> None:
    """Row 4: a client that hangs up on a non-streamed request stops its generation."""
    assert _busy(base_url) == 0
    before = _metric(base_url, "edged_completion_tokens_total")
    url = urlparse(base_url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    while _busy(base_url) == 0:  # generating
        time.sleep(0.05)
    time.sleep(0.3)
    sock.close()
    while _busy(base_url):  # the slot frees once the engine sees the cancel
        time.sleep(0.1)
    while _metric(base_url, "edged_requests_total", route=path, status="499") < 1:
        time.sleep(0.1)  # the access record is written when the handler returns
    generated = _metric(base_url, "edged_completion_tokens_total") - before
    assert generated < LONG / 2, generated


# ---- logit_bias -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bias",
    [
        {"²": 1},  # row 5: int() takes Unicode digits, so this was a 500
        {"٣": 1},
        {"5": 50, "05": 50},  # one token twice: would stack past +100
        {"5": 50, " 5": 50},
        {"-1": 1},
        {"1e3": 1},
        {"": 1},
        {"99999999999999999999999": 1},
        {str(i): 1 for i in range(301)},  # OpenAI's cap is 300 entries
        {"5": 101},
    ],
    ids=["superscript", "arabic", "05", "space5", "negative", "exp", "empty", "huge", "301", "101"],
)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/inference"])
def test_logit_bias_is_checked(base_url: str, path: str, bias: dict[str, float]) -> None:
    body: dict[str, Any] = {"max_tokens": 1, "logit_bias": bias}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    _error(_post(base_url, path, body), "logit_bias")


def test_logit_bias_at_the_cap_works(base_url: str) -> None:
    bias = {str(i): -1 for i in range(298)} | {" 300": 1, "0301": 1}
    r = _post(base_url, "/v1/completions", {"prompt": "hi", "max_tokens": 1, "logit_bias": bias})
    assert r.status_code == 200, r.text


# ---- fields that would change the answer ------------------------------------------------------


@pytest.mark.parametrize(
    "body,param",
    [
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
        ({"best_of": 64}, "best_of"),  # more candidates than slots
        ({"suffix": " and that was all."}, "suffix"),
    ],
)
def test_unservable_completion_fields_are_refused(
    base_url: str, body: dict[str, Any], param: str
) -> None:
    _error(_post(base_url, "/v1/completions", {"prompt": "hi", "max_tokens": 2, **body}), param)


def test_best_of_returns_the_most_likely_candidates(base_url: str) -> None:
    """best_of=4, n=2 returns the two of the four seeded candidates with the highest total
    log-probability; the candidates are what n=4 with the same seed gives."""
    body = {"prompt": "The weather today is", "max_tokens": 8, "temperature": 1.0, "seed": 7}
    every = _post(base_url, "/v1/completions", {**body, "n": 4, "logprobs": 0}).json()
    ranked = sorted(every["choices"], key=lambda c: -sum(c["logprobs"]["token_logprobs"]))
    best = _post(base_url, "/v1/completions", {**body, "n": 2, "best_of": 4, "suffix": ""})
    assert best.status_code == 200, best.text
    answer = best.json()
    assert [c["text"] for c in answer["choices"]] == [c["text"] for c in ranked[:2]]
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["choices"][0]["logprobs"] is None  # not asked for
    assert answer["usage"]["completion_tokens"] == every["usage"]["completion_tokens"]


# ---- a request that can never fit -------------------------------------------------------------


def test_more_sequences_than_slots_and_queue_is_400(base_url: str) -> None:
    """8 slots + 64 queued = 72 sequences at most: 73 is a 400, not a 429 to retry forever."""
    r = _post(base_url, "/v1/completions", {"prompt": ["hi"] * 73, "max_tokens": 1})
    _error(r, "prompt")
    r = _post(base_url, "/v1/completions", {"prompt": ["hi"] * 10, "n": 8, "max_tokens": 1})
    _error(r, "n")


def test_batch_smaller_than_parallel_stops_the_start(tmp_path: Any) -> None:
    cmd = [sys.executable, "-m", "daemon", "serve", "--port", str(free_port())]
    r = subprocess.run(
        [*cmd, "--parallel", "8", "--batch-size", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2, r.stderr
    assert "batch_size (4) must be at least parallel (8)" in r.stderr


# ---- /health ------------------------------------------------------------------------------------


def test_health_shows_no_absolute_paths(base_url: str) -> None:
    r = httpx.get(f"{base_url}/health", timeout=10)
    assert str(embedded_model_path().parent) not in r.text
    assert all(m["file"] == embedded_model_path().name for m in r.json()["models"])
