"""Bad embedding requests get a 4xx in the one error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.e2e.test_errors import assert_error

URL = "/v1/embeddings"
F16 = "minilm-f16"


@pytest.fixture(scope="module")
def http(embed_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embed_server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize(
    "bad",
    [
        {"input": ""},
        {"input": []},
        {"input": ["ok", ""]},
        {"input": [[]]},
        {"input": [[101, 102], []]},
        {"input": 123},
        {"input": None},
        {"input": {"text": "x"}},
        {"input": ["a", 1]},
        {"input": [1.5, 2.5]},
        {"input": ["x"] * 2049},
    ],
)
def test_bad_input(http: httpx.Client, bad: dict[str, Any]) -> None:
    assert_error(http.post(URL, json={"model": F16, **bad}), 400, "input")


def test_missing_input(http: httpx.Client) -> None:
    assert_error(http.post(URL, json={"model": F16}), 400, "input")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dimensions", 0),
        ("dimensions", -3),
        ("dimensions", 385),
        ("dimensions", "x"),
        ("encoding_format", "hex"),
        ("encoding_format", 1),
    ],
)
def test_bad_options(http: httpx.Client, field: str, value: Any) -> None:
    body = {"model": F16, "input": "hi", field: value}
    assert_error(http.post(URL, json=body), 400, field)


def test_token_ids_outside_the_vocabulary(http: httpx.Client) -> None:
    for ids in ([101, 30522, 102], [-1]):
        assert_error(http.post(URL, json={"model": F16, "input": ids}), 400, "input")


def test_input_longer_than_the_context(http: httpx.Client) -> None:
    err = assert_error(http.post(URL, json={"model": F16, "input": "word " * 600}), 400, "input")
    assert err["code"] == "context_length_exceeded"
    ids = [101] + [2773] * 600 + [102]
    err = assert_error(http.post(URL, json={"model": F16, "input": [[101, 102], ids]}), 400)
    assert err["code"] == "context_length_exceeded"


def test_generation_model_has_no_embeddings(http: httpx.Client) -> None:
    for model in ("SmolLM2-135M-Instruct.Q4_1", None):
        body = {"input": "hi", **({"model": model} if model else {})}
        err = assert_error(http.post(URL, json=body), 400, "model")
        assert "embedding" in err["message"]


def test_unknown_model(http: httpx.Client) -> None:
    err = assert_error(http.post(URL, json={"model": "no-such-model", "input": "hi"}), 404, "model")
    assert err["code"] == "model_not_found"


def test_embedding_model_cannot_generate(http: httpx.Client) -> None:
    chat = {"model": F16, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    err = assert_error(http.post("/v1/chat/completions", json=chat), 400, "model")
    assert "embedding model" in err["message"]
    comp = {"model": F16, "prompt": "hi", "max_tokens": 4}
    assert_error(http.post("/v1/completions", json=comp), 400, "model")
    # The model still embeds afterwards.
    assert http.post(URL, json={"model": F16, "input": "hi"}).status_code == 200
