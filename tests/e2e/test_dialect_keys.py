"""API keys on the Anthropic and Responses dialects: x-api-key, per-key stored responses."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_anthropic import assert_anthropic_error
from tests.service.conftest import SMALL, assert_error

MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("dialect-keys"),
        *SMALL,
        "--parallel",
        "2",
        env={"EDGED_API_KEYS": "alpha,beta"},
    )
    yield srv
    stop_server(srv)


def test_anthropic_x_api_key(keyed: Server) -> None:
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    for headers in ({}, {"x-api-key": "nope"}, {"authorization": "Bearer alph"}):
        r = httpx.post(f"{keyed.url}/v1/messages", json=body, headers=headers, timeout=30)
        assert_anthropic_error(r, 401, "authentication_error")
    client = anthropic.Anthropic(base_url=keyed.url, api_key="alpha", max_retries=0)
    m = client.messages.create(**body)  # type: ignore[arg-type]
    assert m.usage.output_tokens > 0
    wrong = anthropic.Anthropic(base_url=keyed.url, api_key="gamma", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL, messages=body["messages"])  # type: ignore[arg-type]


def test_stored_responses_belong_to_their_key(keyed: Server) -> None:
    alpha = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="alpha", max_retries=0)
    beta = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="beta", max_retries=0)
    r = alpha.responses.create(model=MODEL, input="Hello", max_output_tokens=4, temperature=0)
    with pytest.raises(openai.NotFoundError):
        beta.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.create(model=MODEL, input="x", previous_response_id=r.id)
    with pytest.raises(openai.NotFoundError):
        beta.responses.delete(r.id)
    assert alpha.responses.retrieve(r.id).id == r.id
    follow = alpha.responses.create(
        model=MODEL, input="Again", previous_response_id=r.id, max_output_tokens=4
    )
    assert follow.usage is not None and follow.usage.input_tokens_details.cached_tokens > 0
    no_key = httpx.get(f"{keyed.url}/v1/responses/{r.id}", timeout=30)
    assert_error(no_key, 401, "invalid_api_key")
