"""Stored Responses meeting hang-up, timeout and eviction over real HTTP.

A response that did not end normally is never stored (GET and previous_response_id answer
404) and leaves the conversation it extends untouched; a stored chain survives its model's
eviction (the KV store belongs to the registry) and resumes from the kept state.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server

# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, <empty_output>).
EOG = (0, 2, 4)
# A story opening: a plain instruction may end at once on some CPUs (AVX2), a story does not.
STORY = "Once upon a time, there was a cat who"


def _client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=120)


def _turn(c: openai.OpenAI, model: str, text: str, prev: str | None = None, n: int = 8) -> Any:
    return c.responses.create(
        model=model,
        input=text,
        previous_response_id=prev,
        max_output_tokens=n,
        temperature=0,
    )


@pytest.fixture(scope="module")
def evicting(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two more names for the embedded model (loaded separately) and room for two models:
    loading one evicts the other (the default stays)."""
    tmp = tmp_path_factory.mktemp("evicting")
    models = tmp / "models"
    models.mkdir()
    for name in ("alpha", "beta"):
        os.symlink(model_path, models / f"{name}.gguf")
    srv = start_server(
        tmp,
        "--strict-model-names",
        "--models-dir",
        str(models),
        "--max-loaded-models",
        "2",
        "--parallel",
        "2",
        "--threads",
        "1",
    )
    yield srv
    stop_server(srv)


def _loaded(srv: Server) -> set[str]:
    ps = httpx.get(f"{srv.url}/api/ps", timeout=120).json()
    return {m["name"] for m in ps["models"]}


def test_a_chain_resumes_after_its_model_was_evicted(evicting: Server) -> None:
    c = _client(evicting)
    first = _turn(c, "alpha", "Tell me about cats.")
    # The same chain without eviction, for reference.
    ref = _turn(c, "alpha", "And dogs?", prev=first.id)
    _turn(c, "beta", "Hello")  # loads beta: alpha is evicted (the default model stays)
    assert "alpha" not in _loaded(evicting)
    again = _turn(c, "alpha", "And dogs?", prev=first.id)
    assert again.output_text == ref.output_text
    # The history came from the kept state, restored into the newly loaded model.
    assert again.usage.input_tokens_details.cached_tokens > 0, again.usage
    assert again.usage.input_tokens == ref.usage.input_tokens


def test_hang_up_mid_stream_stores_nothing_and_keeps_the_chain(evicting: Server) -> None:
    c = _client(evicting)
    first = _turn(c, "alpha", "Tell me a story.")
    ref = _turn(c, "alpha", STORY, prev=first.id, n=6)
    body = {
        "model": "alpha",
        "input": STORY,
        "previous_response_id": first.id,
        "max_output_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    cut_id = None
    with (
        httpx.Client(base_url=evicting.url, timeout=120) as http,
        http.stream("POST", "/v1/responses", json=body) as r,
    ):
        assert r.status_code == 200
        deltas = 0
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev["type"] == "response.created":
                cut_id = ev["response"]["id"]
            if ev["type"] == "response.output_text.delta":
                deltas += 1
                if deltas == 3:
                    break  # hang up
    assert cut_id is not None
    # The cut response was never stored: not retrievable, not continuable.
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(cut_id)
    with pytest.raises(openai.NotFoundError):
        _turn(c, "alpha", "more", prev=cut_id)
    # The conversation it extended still continues exactly.
    again = _turn(c, "alpha", STORY, prev=first.id, n=6)
    assert again.output_text == ref.output_text


def test_timeout_stores_nothing_and_keeps_the_chain(model_path: Path, tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, "--strict-model-names", "--parallel", "1", "--request-timeout", "4"
    )
    try:
        c = _client(srv)
        model = model_path.stem
        first = _turn(c, model, "Tell me a story.", n=4)
        ref = _turn(c, model, STORY, prev=first.id, n=4)
        body = {
            "model": model,
            "input": STORY,
            "previous_response_id": first.id,
            "max_output_tokens": 3000,
            "temperature": 0,
            # End-of-generation banned (edged's shared sampling fields): the answer runs
            # until the timeout on any CPU, however soon the story would end.
            "logit_bias": {str(t): -100 for t in EOG},
        }
        r = httpx.post(f"{srv.url}/v1/responses", json=body, timeout=120)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "timeout"
        # Streamed: the semantic events end with one error event.
        events = []
        with (
            httpx.Client(base_url=srv.url, timeout=120) as http,
            contextlib.suppress(httpx.RemoteProtocolError),
            http.stream("POST", "/v1/responses", json={**body, "stream": True}) as s,
        ):
            assert s.status_code == 200
            for line in s.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] == "error" and events[-1]["code"] == "timeout", events[-1]
        cut_id = events[0]["response"]["id"]
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(cut_id)
        # The chain is untouched: the same follow-up as before, once the slot is free again.
        for _ in range(100):
            try:
                again = _turn(c, model, STORY, prev=first.id, n=4)
                break
            except openai.APIStatusError as exc:  # 429 while the cut one still runs
                assert exc.status_code in (429, 503), exc
                time.sleep(0.2)
        assert again.output_text == ref.output_text
    finally:
        stop_server(srv)
