"""llama-server's server-wide request defaults: `--seed` (the seed of a request that sets none)
and `--verbose` (answers carry `__verbose`: the prompt as rendered, the tokens, the settings),
with each request's own field winning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct.Q4_1"
ASK = [{"role": "system", "content": "Book"}, {"role": "user", "content": "What is the best book"}]
SAMPLED = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """--exact: sampled answers of separate requests are compared, and under the fast default
    a reused prefix may round differently at a near-tie (docs/exactness.md)."""
    srv: Server = start_server(
        tmp_path_factory.mktemp("defaults"), "--exact", "--seed", "42", "--verbose"
    )
    yield srv.url
    stop_server(srv)


def _post(base_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{base_url}{path}", json={"model": MODEL, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _chat(base_url: str, **body: Any) -> dict[str, Any]:
    return _post(base_url, "/v1/chat/completions", {"messages": ASK, "max_tokens": 12, **body})


def test_seed_is_the_default_of_requests_without_one(base_url: str) -> None:
    """Two unseeded sampled requests agree (as llama-server's `--seed 42` makes them), and
    equal an explicit seed 42; choice j of n draws from seed + j as it does with a seed."""
    first = _post(base_url, "/completion", {"prompt": "Once upon", "n_predict": 16, **SAMPLED})
    again = _post(base_url, "/completion", {"prompt": "Once upon", "n_predict": 16, **SAMPLED})
    seeded = _post(
        base_url, "/completion", {"prompt": "Once upon", "n_predict": 16, "seed": 42, **SAMPLED}
    )
    assert first["content"] == again["content"] == seeded["content"]
    assert first["generation_settings"]["seed"] == 42  # the seed it ran with

    two = _chat(base_url, n=2, **SAMPLED)
    for j, seed in enumerate((42, 43)):
        alone = _chat(base_url, seed=seed, **SAMPLED)
        assert two["choices"][j]["message"] == alone["choices"][0]["message"]


def test_a_request_seed_wins_over_the_default(base_url: str) -> None:
    texts = {
        _chat(base_url, seed=s, max_tokens=24, **SAMPLED)["choices"][0]["message"]["content"]
        for s in (42, 7, 1234)
    }
    assert len(texts) > 1  # three seeds, one text each: the request's seed is used


def test_verbose_shows_the_rendered_prompt(base_url: str) -> None:
    """`__verbose` carries the prompt as the template rendered it (what /apply-template
    shows), what was generated, and the settings it ran with; `verbose: false` drops it."""
    rendered = _post(base_url, "/apply-template", {"messages": ASK})["prompt"]
    body = _chat(base_url, temperature=0)
    shown = body["__verbose"]
    assert shown["prompt"] == rendered and "Book" in shown["prompt"]
    assert shown["content"] == body["choices"][0]["message"]["content"]
    assert shown["tokens_predicted"] == len(shown["tokens"]) == body["usage"]["completion_tokens"]
    assert shown["tokens_evaluated"] == body["usage"]["prompt_tokens"]
    assert shown["generation_settings"]["temperature"] == 0.0
    assert shown["generation_settings"]["seed"] == 42  # the daemon's default, as run
    assert shown["stop_type"] in {"eos", "limit"}
    assert "__verbose" not in _chat(base_url, temperature=0, verbose=False)


def test_verbose_of_a_stream_and_of_text_completions(base_url: str) -> None:
    """Streamed, each choice's finishing chunk carries its `__verbose`; /v1/completions shows
    the prompt as text (special tokens written out) and one object per choice for n > 1."""
    with httpx.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": ASK, "max_tokens": 8, "stream": True, "n": 2},
        timeout=120,
    ) as r:
        events = [
            json.loads(line[6:])
            for line in r.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    text = ["", ""]
    shown: dict[int, dict[str, Any]] = {}
    for e in events:
        for c in e["choices"]:
            text[c["index"]] += c["delta"].get("content") or ""
            if c["finish_reason"] is not None:
                shown[c["index"]] = e["__verbose"]
    assert sorted(shown) == [0, 1]
    assert [shown[i]["content"] for i in (0, 1)] == text
    assert sum("__verbose" in e for e in events) == 2

    body = _post(
        base_url,
        "/v1/completions",
        {"prompt": "The capital of France is", "max_tokens": 4, "n": 2, "temperature": 0},
    )
    assert [v["content"] for v in body["__verbose"]] == [c["text"] for c in body["choices"]]
    assert all(v["prompt"].endswith("The capital of France is") for v in body["__verbose"])


def test_verbose_through_the_openai_sdk(base_url: str) -> None:
    """The official client passes the field through `extra_body` and reads it back."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    plain = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=4, temperature=0, extra_body={"verbose": False}
    )
    assert "__verbose" not in (plain.model_extra or {})
    shown = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    assert (shown.model_extra or {})["__verbose"]["content"] == shown.choices[0].message.content
