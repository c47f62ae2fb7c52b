"""Resumable streams (llama-server's `X-Conversation-Id`, `/v1/stream`) on a real daemon with
two API keys: a replay is the very bytes sent, the generation outlives its client's hang-up,
a stop ends it, and another key can neither read, stop nor find a stream."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import anthropic
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct.Q4_1"
ALPHA = {"Authorization": "Bearer alpha"}
BETA = {"Authorization": "Bearer beta"}
OPS = {"Authorization": "Bearer ops"}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("resumable")
    keys = tmp / "keys"
    keys.write_text("ops scopes=inference,admin\n")  # reads /slots; an admin, not an owner
    srv: Server = start_server(
        tmp, "--parallel", "2", "--api-key-file", str(keys), env={"EDGED_API_KEYS": "alpha,beta"}
    )
    yield srv.url
    stop_server(srv)


def _qs(conv: str) -> str:
    return "conv_id=" + quote(conv, safe="")


def _stream(base_url: str, path: str, body: dict[str, Any], conv: str | None) -> bytes:
    headers = {**ALPHA, **({"X-Conversation-Id": conv} if conv else {})}
    with httpx.stream("POST", f"{base_url}{path}", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        return b"".join(r.iter_bytes())


def _replay(
    base_url: str, conv: str, start: int = 0, key: dict[str, str] = ALPHA
) -> httpx.Response:
    return httpx.get(f"{base_url}/v1/stream?{_qs(conv)}&from={start}", headers=key, timeout=120)


def _lookup(base_url: str, ids: list[str], key: dict[str, str] = ALPHA) -> list[dict[str, Any]]:
    r = httpx.post(
        f"{base_url}/v1/streams/lookup", json={"conversation_ids": ids}, headers=key, timeout=30
    )
    assert r.status_code == 200, r.text
    return list(r.json())


CHAT = {
    "model": MODEL,
    "stream": True,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
}


def test_replay_is_the_stream_as_sent(base_url: str) -> None:
    """The id may hold slashes (a model name): it travels in the query string."""
    conv = "conv-1::ggml-org/tinygemma3-GGUF:Q8_0"
    sent = _stream(base_url, "/v1/chat/completions", CHAT, conv)
    assert sent.endswith(b"data: [DONE]\r\n\r\n")
    r = _replay(base_url, conv)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.content == sent
    assert _replay(base_url, conv, 10).content == sent[10:]
    assert _lookup(base_url, ["conv-1"]) == [
        {
            "conversation_id": conv,
            "is_done": True,
            "total_bytes": len(sent),
            "started_at": _lookup(base_url, [conv])[0]["started_at"],
            "completed_at": _lookup(base_url, [conv])[0]["completed_at"],
        }
    ]
    assert httpx.delete(f"{base_url}/v1/stream?{_qs(conv)}", headers=ALPHA).status_code == 204
    assert _replay(base_url, conv).status_code == 404
    assert _lookup(base_url, [conv]) == []
    # A stream without the header is not recorded.
    _stream(base_url, "/v1/chat/completions", CHAT, None)
    assert _lookup(base_url, [""]) == []


def test_another_key_finds_nothing(base_url: str) -> None:
    conv = "private"
    sent = _stream(base_url, "/v1/chat/completions", CHAT, conv)
    other = _replay(base_url, conv, key=BETA)
    assert other.status_code == 404 and other.json()["error"]["type"]
    assert _lookup(base_url, [conv], key=BETA) == []
    assert _replay(base_url, conv, key=OPS).status_code == 404  # an admin is no owner either
    assert httpx.delete(f"{base_url}/v1/stream?{_qs(conv)}", headers=BETA).status_code == 204
    assert _replay(base_url, conv).content == sent  # beta's stop reached nothing of alpha's
    # beta's own stream of the same id is beta's, and leaves alpha's alone
    beta = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 4},
        headers={**BETA, "X-Conversation-Id": conv},
        timeout=120,
    )
    assert beta.status_code == 200
    assert _replay(base_url, conv).content == sent
    assert _replay(base_url, conv, key=BETA).content == beta.content


def _hang_up_after_first_event(base_url: str, path: str, body: dict[str, Any], conv: str) -> None:
    """Send the request (as key alpha) on a raw socket, read until the first event, then
    close it."""
    url = urlparse(base_url)
    payload = json.dumps(body)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer alpha\r\nX-Conversation-Id: {conv}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n{payload}"
    )
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(request.encode())
        got = b""
        while b"data: " not in got:
            got += sock.recv(4096)


def _wait_done(base_url: str, conv: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = _lookup(base_url, [conv])
        if found and found[0]["is_done"]:
            return
        time.sleep(0.1)
    raise AssertionError("the stream did not end")


def test_the_generation_outlives_its_client(base_url: str) -> None:
    """A hang-up after the first event cuts nothing: the replay holds the whole answer, the
    last event included, with every token asked for."""
    conv = "reload"
    body = {
        "prompt": "Count:",
        "n_predict": 48,
        "ignore_eos": True,
        "stream": True,
        "return_tokens": True,
    }
    _hang_up_after_first_event(base_url, "/completion", body, conv)
    _wait_done(base_url, conv)
    events = [
        json.loads(line[6:])
        for line in _replay(base_url, conv).text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 48
    assert sum(len(e["tokens"]) for e in events) == 48  # every token was sent, none lost


def test_stop_ends_a_live_generation(base_url: str) -> None:
    """DELETE during the generation stops it: the stream ends early and the model's slots
    are free again."""
    conv = "stop-me"
    body = {"prompt": "Count:", "n_predict": 4000, "ignore_eos": True, "stream": True}
    _hang_up_after_first_event(base_url, "/completion", body, conv)
    assert httpx.delete(f"{base_url}/v1/stream?{_qs(conv)}", headers=ALPHA).status_code == 204
    assert _replay(base_url, conv).status_code == 404
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        slots = httpx.get(f"{base_url}/slots", headers=OPS, timeout=30).json()
        if not any(s["is_processing"] for s in slots):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the stopped generation still runs")


def test_named_events_replay_through_the_anthropic_sdk(base_url: str) -> None:
    """Anthropic's named events are recorded byte for byte like OpenAI's `data:` events."""
    conv = "anthropic-conv"
    client = anthropic.Anthropic(
        base_url=base_url, api_key="alpha", default_headers={"X-Conversation-Id": conv}
    )
    with client.messages.stream(
        model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        text = s.get_final_text()
    replay = _replay(base_url, conv).text
    assert "event: message_stop" in replay
    deltas = [
        json.loads(line[6:])["delta"].get("text", "")
        for line in replay.splitlines()
        if line.startswith("data: ") and '"content_block_delta"' in line
    ]
    assert "".join(deltas) == text


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("conv_id=", 400),
        ("conv_id=" + "x" * 300, 400),
        ("conv_id=nope", 404),
        ("conv_id=nope&from=-1", 400),
        ("conv_id=nope&from=x", 400),
    ],
)
def test_bad_stream_queries(base_url: str, query: str, status: int) -> None:
    r = httpx.get(f"{base_url}/v1/stream?{query}", headers=ALPHA, timeout=30)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_bad_lookups(base_url: str) -> None:
    for body in ({}, {"conversation_ids": "x"}, {"conversation_ids": ["x" * 300]}, []):
        r = httpx.post(f"{base_url}/v1/streams/lookup", json=body, headers=ALPHA, timeout=30)
        assert r.status_code == 400, r.text


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    # what a header can carry (h11 refuses surrounding blanks before they are sent)
    conv=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300).filter(
        lambda v: v == v.strip()
    )
)
def test_any_conversation_id_header(base_url: str, conv: str) -> None:
    """Whatever the header holds, the answer streams whole; an id that can be recorded
    (non-blank, at most 256 characters) replays it, any other is simply not recorded."""
    sent = _stream(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 2}, conv)
    assert sent.endswith(b"data: [DONE]\r\n\r\n")
    if conv and len(conv) <= 256:
        assert _replay(base_url, conv).content == sent


def _events(base_url: str, conv: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in _replay(base_url, conv).text.splitlines()
        if line.startswith("data: ")
    ]


def _idle(base_url: str) -> bool:
    """Whether no slot of the (keyless, loopback) daemon is generating."""
    slots = httpx.get(f"{base_url}/slots", timeout=30).json()
    return not any(s["is_processing"] for s in slots)


# A generation far longer than any limit below (~2 tokens per test second at most).
ENDLESS = {"prompt": "Count:", "n_predict": 1500, "ignore_eos": True, "stream": True}
SMALL = ("--threads", "1", "--parallel", "1", "--ctx-size", "2048")


def test_a_recorded_generation_keeps_its_request_timeout(tmp_path: Path) -> None:
    """Detached from its client, a generation is still cut at the request timeout: the
    recording ends with one error event, the slot is freed, and the daemon answers on."""
    srv = start_server(tmp_path, *SMALL, "--request-timeout", "3")
    try:
        _hang_up_after_first_event(srv.url, "/completion", ENDLESS, "slow")
        _wait_done(srv.url, "slow")
        events = _events(srv.url, "slow")
        error = events[-1]["error"]  # llama-server's shape: the HTTP status as its code
        assert error["code"] == 504 and "within 3 s" in error["message"], error
        assert sum(len(e.get("tokens", [])) for e in events) < ENDLESS["n_predict"]
        assert _idle(srv.url)
        r = httpx.post(f"{srv.url}/completion", json={"prompt": "Hi", "n_predict": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 4
    finally:
        stop_server(srv)


def test_the_drain_waits_for_a_recorded_generation(tmp_path: Path) -> None:
    """SIGTERM after the client left: the detached generation is one of the requests the
    drain waits for, so it finishes whole before the daemon exits 0."""
    srv = start_server(tmp_path, *SMALL, "--drain-timeout", "240")
    try:
        body = {**ENDLESS, "n_predict": 40}
        _hang_up_after_first_event(srv.url, "/completion", body, "drained")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(240) == 0
        log = srv.log.read_text()
        ended = re.search(r"resumable stream 'drained' ended: \d+ prompt, (\d+) completion", log)
        assert ended is not None and int(ended.group(1)) == 40, log
        assert "drain timeout" not in log
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)


def test_the_drain_timeout_cuts_a_recorded_generation(tmp_path: Path) -> None:
    """At the drain timeout the detached generation is cut like any request: the daemon
    exits 0 in time, having generated less than was asked."""
    srv = start_server(tmp_path, *SMALL, "--drain-timeout", "1")
    try:
        _hang_up_after_first_event(srv.url, "/completion", ENDLESS, "cut")
        began = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        assert time.monotonic() - began < 30
        log = srv.log.read_text()
        assert "drain timeout" in log, log
        ended = re.search(r"resumable stream 'cut' ended: \d+ prompt, (\d+) completion", log)
        assert ended is not None, log
        assert int(ended.group(1)) < ENDLESS["n_predict"]
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)
