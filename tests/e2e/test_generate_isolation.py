"""/api/generate between API keys over real HTTP: the issue-11 rows and the store's edges."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
GREEDY = {"do_sample": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("iso")
    srv = start_server(
        tmp,
        "--parallel",
        "2",
        "--ctx-size",
        "2048",
        env={"EDGED_API_KEYS": "key-a,key-b"},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=600) as c:
        yield c


def gen(
    http: httpx.Client,
    key: dict[str, str],
    rid: str,
    prompt: str | None = None,
    only_new: bool = True,
    **cfg: object,
) -> httpx.Response:
    body: dict[str, object] = {
        "request_id": rid,
        "stream_response": False,
        "only_new_tokens": only_new,
        "generation_config": {**GREEDY, **cfg},
    }
    if prompt is not None:
        body["prompt"] = prompt
    return http.post("/api/generate", json=body, headers=key)


SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_A = f"{SYSTEM}<|im_end|>\n<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
CHAT_B = "<|im_start|>user\nThe code word is PELICAN. Repeat it.<|im_end|>\n<|im_start|>assistant\n"


def test_row1_a_finished_id_never_returns_another_keys_text(http: httpx.Client) -> None:
    first = gen(http, A, "row1", CHAT_A, max_new_tokens=200)
    assert first.status_code == 200
    for i in range(3):  # key B occupies both slots with its own conversation
        assert gen(http, B, f"b{i}", CHAT_B, max_new_tokens=12).status_code == 200
    again = gen(http, A, "row1", max_new_tokens=20)
    assert again.status_code == 200 and again.text == ""
    full = gen(http, A, "row1", only_new=False, max_new_tokens=20)
    assert full.status_code == 200
    assert "PELICAN" not in full.text
    assert full.text == CHAT_A + first.text


def test_row2_length_penalty_has_a_range(http: httpx.Client) -> None:
    for lp in (1000, -1100, 1e308):
        r = gen(http, A, "lp", "Hello", num_beams=2, length_penalty=lp, max_new_tokens=4)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "generation_config"
    ok = gen(http, A, "lp", "Hello", num_beams=2, length_penalty=10, max_new_tokens=4)
    assert ok.status_code == 200


def test_row6_zero_new_tokens_returns_the_text_so_far(http: httpx.Client) -> None:
    prompt = "The history of the printing press"
    whole = gen(http, A, "row6-ref", prompt, max_new_tokens=16).text
    first = gen(http, A, "row6", prompt, max_new_tokens=8).text
    assert gen(http, A, "row6", max_new_tokens=0).text == ""
    so_far = gen(http, A, "row6", only_new=False, max_new_tokens=0)
    assert so_far.text == prompt + first
    second = gen(http, A, "row6", max_new_tokens=8).text
    assert first + second == whole


def test_a_hang_up_keeps_the_exact_history(http: httpx.Client) -> None:
    prompt = "Count from one to fifty: one, two,"
    ref = gen(http, A, "hang-ref", prompt, max_new_tokens=24).text
    body = {
        "request_id": "hang",
        "prompt": prompt,
        "generation_config": {**GREEDY, "max_new_tokens": 400},
    }
    with http.stream("POST", "/api/generate", json=body, headers=A) as r:
        it = r.iter_text()
        next(it)
    # The engine lets go of the id at its next step; retry the 409 until then.
    for _ in range(300):
        full = gen(http, A, "hang", only_new=False, max_new_tokens=8)
        if full.status_code != 409:
            break
        time.sleep(0.2)
    assert full.status_code == 200
    assert full.text.startswith(prompt)
    assert ref.startswith(full.text[len(prompt) :]) or full.text[len(prompt) :].startswith(ref)


def test_delete_is_for_the_owner_only(http: httpx.Client) -> None:
    assert gen(http, A, "gone", "Hello there", max_new_tokens=4).status_code == 200
    assert http.delete("/api/generate/gone", headers=B).status_code == 404
    assert http.delete("/api/generate/gone", headers=A).status_code == 204
    assert http.delete("/api/generate/gone", headers=A).status_code == 404
    r = gen(http, A, "gone", max_new_tokens=4)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:_total)?{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_store_metrics_count(http: httpx.Client) -> None:
    def scrape() -> dict[str, float]:
        text = http.get("/metrics", headers=A).text
        names = ("hits", "misses", "bytes", "entries")
        return {n: _metric(text, f"edged_request_store_{n}") for n in names}

    before = scrape()
    assert gen(http, A, "metered", "Hello", max_new_tokens=4).status_code == 200
    mid = scrape()
    assert mid["misses"] == before["misses"] + 1
    assert mid["entries"] == before["entries"] + 1
    assert mid["bytes"] > before["bytes"]
    assert gen(http, A, "metered", max_new_tokens=4).status_code == 200
    assert scrape()["hits"] == mid["hits"] + 1


def test_streamed_generate_is_metered(http: httpx.Client) -> None:
    def tokens() -> float:
        return _metric(http.get("/metrics", headers=A).text, "edged_completion_tokens")

    before = tokens()
    body = {
        "request_id": "metered-stream",
        "prompt": "Hi",
        "generation_config": {**GREEDY, "max_new_tokens": 5},
    }
    r = http.post("/api/generate", json=body, headers=A)
    assert r.status_code == 200
    assert tokens() >= before + 1


def test_streamed_generate_is_timed_out_and_says_so(tmp_path: Path) -> None:
    """The default (streamed) mode is under the request timeout too; the cut is visible."""
    body = {
        "request_id": "too-long",
        # A plain instruction is answered by an immediate end-of-text on some CPUs (AVX2):
        # a story opening keeps the model writing past the 1 s timeout.
        "prompt": "Once upon a time, there was a cat who",
        "generation_config": {**GREEDY, "max_new_tokens": 1900},
    }
    srv = start_server(tmp_path, "--parallel", "1", "--ctx-size", "2048", "--request-timeout", "1")
    try:
        received = []
        # The cut writes the error line, then aborts the chunked transfer; whether the client
        # sees the abort as a protocol error depends on how the last bytes arrive, so the test
        # holds the documented signal: the error line.
        with (
            httpx.Client(base_url=srv.url, timeout=60) as http,
            contextlib.suppress(httpx.RemoteProtocolError),
            http.stream("POST", "/api/generate", json=body) as r,
        ):
            assert r.status_code == 200
            for part in r.iter_text():
                received.append(part)
        text = "".join(received)
        assert "\n[edged error: timeout: " in text
        # The id keeps what was generated: it continues rather than needing a prompt again.
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for _ in range(300):  # the engine lets go of the id at its next step
                nxt = gen(http, {}, "too-long", max_new_tokens=2)
                if nxt.status_code != 409:
                    break
                time.sleep(0.2)
            assert nxt.status_code == 200, nxt.text
    finally:
        stop_server(srv)
