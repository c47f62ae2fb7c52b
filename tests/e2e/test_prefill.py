"""A final assistant message is continued (a prefill), on every chat dialect: Anthropic's rule
("the response continues immediately from the content in that message"), llama-server's
default, vLLM's and transformers' `continue_final_message`; `add_generation_prompt: false`
opens no turn. Checked against /completion of the very prompt /apply-template shows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.service.conftest import assert_error

MODEL = "SmolLM2-135M-Instruct.Q4_1"
ASK = "Name a famous book about a whale."
PREFILL = "The most famous one is"
MSGS: list[Any] = [
    {"role": "user", "content": ASK},
    {"role": "assistant", "content": PREFILL},
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bit-exact daemon (--exact): each dialect's answer is compared with /completion's for
    the same prompt, whose KV the later requests reuse; under the fast default a reused
    prefix may round differently at a near-tie (docs/exactness.md)."""
    srv: Server = start_server(tmp_path_factory.mktemp("prefill"), "--exact", "--parallel", "2")
    yield srv.url
    stop_server(srv)


def _post(base_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json={"model": MODEL, **body}, timeout=120)


def _template(base_url: str, **switches: Any) -> str:
    r = _post(base_url, "/apply-template", {"messages": MSGS, **switches})
    assert r.status_code == 200, r.text
    return str(r.json()["prompt"])


def test_the_prompt_ends_inside_the_final_message(base_url: str) -> None:
    prefill = _template(base_url)
    assert prefill.endswith(f"<|im_start|>assistant\n{PREFILL}")
    assert _template(base_url, continue_final_message=True, add_generation_prompt=False) == (
        prefill
    )
    answered = _template(base_url, continue_final_message=False)
    assert answered == _template(base_url, continue_final_message=False) and answered.endswith(
        f"{PREFILL}<|im_end|>\n<|im_start|>assistant\n"
    )
    closed = _template(base_url, continue_final_message=False, add_generation_prompt=False)
    assert closed.endswith(f"{PREFILL}<|im_end|>\n")
    r = _post(
        base_url,
        "/apply-template",
        {"messages": MSGS, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert r.status_code == 400 and "continue_final_message" in r.text


def test_every_dialect_continues_from_the_prefill(base_url: str) -> None:
    prompt = _template(base_url)
    raw = _post(base_url, "/completion", {"prompt": prompt, "n_predict": 12, "temperature": 0})
    expected = raw.json()["content"]
    assert expected

    oa = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    chat = oa.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == expected
    assert chat.usage is not None and chat.usage.prompt_tokens == raw.json()["tokens_evaluated"]

    claude = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0)
    msg = claude.messages.create(
        model=MODEL, max_tokens=12, messages=MSGS, extra_body={"temperature": 0}
    )
    assert msg.content[0].type == "text" and msg.content[0].text == expected

    olla = ollama.Client(host=base_url).chat(
        model=MODEL,
        messages=MSGS,
        options={"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0},  # Ollama: 1.1
    )
    assert olla.message.content == expected


def test_switches_and_what_is_never_continued(base_url: str) -> None:
    oa = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    answered = oa.chat.completions.create(
        model=MODEL,
        messages=MSGS,
        max_tokens=8,
        temperature=0,
        extra_body={"continue_final_message": False},
    )
    prompt = _template(base_url, continue_final_message=False)
    raw = _post(base_url, "/completion", {"prompt": prompt, "n_predict": 8, "temperature": 0})
    assert answered.choices[0].message.content == raw.json()["content"]
    # A final assistant turn that made calls has nothing to continue: it is answered.
    calls: list[Any] = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]
    r = _post(base_url, "/apply-template", {"messages": calls})
    assert r.json()["prompt"].endswith("<|im_start|>assistant\n")
    both = {"continue_final_message": True, "add_generation_prompt": True}
    err = assert_error(_post(base_url, "/v1/chat/completions", {"messages": MSGS, **both}), 400)
    assert err["param"] == "continue_final_message"
    # Two assistant messages at the end: which would be continued? llama-server's 400,
    # unless continue_final_message says the last (or false: answer after both).
    twice = [*MSGS, {"role": "assistant", "content": "or perhaps"}]
    err = assert_error(_post(base_url, "/v1/chat/completions", {"messages": twice}), 400)
    assert err["param"] == "messages" and "two assistant messages" in err["message"]
    for explicit in (True, False):
        body = {"messages": twice, "continue_final_message": explicit, "max_tokens": 2}
        if explicit:
            body["add_generation_prompt"] = False
        assert _post(base_url, "/v1/chat/completions", body).status_code == 200


def test_llama_servers_json_schema_field(base_url: str) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    ask = {"messages": [{"role": "user", "content": "A number, as JSON."}], "max_tokens": 24}
    r = _post(base_url, "/v1/chat/completions", {**ask, "json_schema": schema, "temperature": 0})
    assert r.status_code == 200, r.text
    value = json.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(value["n"], int)
    fmt = {"type": "json_object"}
    err = assert_error(
        _post(
            base_url, "/v1/chat/completions", {**ask, "json_schema": schema, "response_format": fmt}
        ),
        400,
    )
    assert err["param"] == "json_schema"


@pytest.mark.parametrize("schema", [{"type": "hiccup"}, {"properties": 3}])
def test_a_bad_json_schema_is_a_400(base_url: str, schema: dict[str, Any]) -> None:
    ask = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "json_schema": schema}
    err = assert_error(_post(base_url, "/v1/chat/completions", ask), 400)
    assert err["param"] == "json_schema"
