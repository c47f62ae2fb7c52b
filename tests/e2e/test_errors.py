"""Bad input gets a 4xx in the one error shape; no input produces a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def test_malformed_json(http: httpx.Client) -> None:
    r = http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_missing_messages(http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json={"model": "x"}), 400, "messages")


def test_empty_messages(http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json={"messages": []}), 400, "messages")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "hot"),
        ("top_p", 0),
        ("top_p", 1.5),
        ("min_p", 1.1),
        ("top_k", 1000),
        ("top_k", -1),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -2.1),
        ("repetition_penalty", 0.001),
        ("repetition_penalty", 5.5),
        ("max_tokens", -1),
        ("seed", -1),
        ("stream", "yes please"),
        ("stop", 5),
    ],
)
def test_out_of_range_names_param(http: httpx.Client, field: str, value: Any) -> None:
    err = assert_error(http.post(CHAT, json={"messages": MSGS, field: value}), 400, field)
    assert err["type"] == "invalid_request_error"


def test_unknown_model_is_404(http: httpx.Client) -> None:
    err = assert_error(http.post(CHAT, json={"model": "nope", "messages": MSGS}), 404, "model")
    assert err["code"] == "model_not_found"


def test_context_length_exceeded(http: httpx.Client) -> None:
    err = assert_error(
        http.post(CHAT, json={"messages": MSGS, "max_tokens": 4096}), 400, "max_tokens"
    )
    assert err["code"] == "context_length_exceeded"
    long_prompt = "word " * 5000
    err = assert_error(
        http.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1}), 400
    )
    assert err["code"] == "context_length_exceeded"


def test_bad_token_ids(http: httpx.Client) -> None:
    assert_error(http.post("/v1/completions", json={"prompt": [1, 10**9]}), 400, "prompt")


def test_n_above_cap_is_refused(http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json={"messages": MSGS, "n": 17}), 400, "n")
    assert_error(http.post(CHAT, json={"messages": MSGS, "n": 0}), 400, "n")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_body_too_large(http: httpx.Client) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert_error(http.post(CHAT, json=big), 413)


def test_sse_framing(http: httpx.Client) -> None:
    with http.stream("POST", CHAT, json={"messages": MSGS, "max_tokens": 5, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.replace("\r\n", "\n").split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_scheduler_survives_bad_requests(http: httpx.Client) -> None:
    r = http.post(
        "/v1/completions",
        json={"prompt": "Q: The capital of France is?\nA:", "max_tokens": 1, "temperature": 0},
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == " Paris"


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
_fields = {
    "model": st.sampled_from([None, "SmolLM2-135M-Instruct.Q4_1", "missing"]) | _any_json,
    "messages": st.just(MSGS)
    | st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "bogus"]) | _any_json,
                "content": st.text(max_size=20) | _any_json,
            }
        ),
        max_size=3,
    )
    | _any_json,
    "prompt": st.text(max_size=20) | st.lists(st.integers(-5, 60000), max_size=4) | _any_json,
    "temperature": st.floats(-1, 3) | _any_json,
    "top_p": st.floats(-0.5, 1.5) | _any_json,
    "top_k": st.integers(-3, 1200) | _any_json,
    "min_p": st.floats(-1, 2) | _any_json,
    "typical_p": st.floats(-1, 2) | _any_json,
    "repetition_penalty": st.floats(-1, 6) | _any_json,
    "presence_penalty": st.floats(-3, 3) | _any_json,
    "frequency_penalty": st.floats(-3, 3) | _any_json,
    "seed": st.integers(-3, 2**64) | _any_json,
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=20) | _any_json,
    "stream": st.booleans() | _any_json,
    "n": st.integers(-1, 3) | _any_json,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | _any_json,
}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from([CHAT, "/v1/completions"]),
    # max_tokens is always present and small (or invalid) so no example generates for long.
    body=st.fixed_dictionaries(
        {
            "max_tokens": st.integers(-2, 4)
            | st.integers(10**6 - 2, 10**6 + 2)
            | st.floats(-1, 3)
            | st.text(max_size=3)
        },
        optional=_fields,
    )
    | _any_json,
)
def test_fuzz_never_500(http: httpx.Client, path: str, body: Any) -> None:
    """Random bodies: every answer is 2xx, or a 4xx in the one error shape."""
    # json.dumps writes NaN/Infinity literals, which the server must refuse as bad JSON.
    r = http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.rstrip().endswith("data: [DONE]")
