"""A real daemon over HTTP: the embedded model carrying corpus templates renders OpenAI-shaped
conversations (llama-server's `/apply-template`) as transformers renders them, and a
conversation the template refuses is a 400 in the dialect's shape, through the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_reasoning import make_thinking_gguf
from tests.templates.conversations import CONVERSATIONS, Conversation
from tests.templates.reference import hf_render
from tests.templates.test_core_path import hf_convention, openai_message

CORPUS = Path(__file__).parent / "corpus"
# alias -> corpus template: `<think>` and content-reading (Qwen3), strftime_now (Llama 3.2,
# gpt-oss), `{% break %}` (Command R7B, which edged could not compile before), harmony's
# `thinking` (gpt-oss).
MODELS = {
    "qwen3": "Qwen-Qwen3-0.6B",
    "llama32": "meta-llama-Llama-3.2-3B-Instruct",
    "commandr": "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "gptoss": "openai-gpt-oss-120b",
}
NAMES = ("tool_call_history", "calls_then_answer", "reasoning_history", "thinking_off")
HTTP_CONVERSATIONS = tuple(c for c in CONVERSATIONS if c.name in NAMES)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm_gguf: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("templates")
    args: list[str] = []
    for alias, name in MODELS.items():
        source = (CORPUS / f"{name}.jinja").read_text(encoding="utf-8")
        path = make_thinking_gguf(smollm_gguf, tmp / f"{alias}.gguf", source)
        args += ["--alias", f"{alias}={path}"]
    srv = start_server(tmp, "--parallel", "1", *args)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def special(server: Server) -> dict[str, str]:
    """The model's special tokens as the daemon gives them to templates."""
    props = httpx.get(f"{server.url}/props", timeout=60).json()
    return {"bos_token": props["bos_token"], "eos_token": props["eos_token"]}


def _expected(name: str, conv: Conversation, special: dict[str, str]) -> str:
    """transformers' text: the conversation as edged's core hands it over (call-only turns'
    content empty), no tools (/apply-template takes none)."""
    return hf_render(
        (CORPUS / f"{name}.jinja").read_text(encoding="utf-8"),
        hf_convention(conv, empty_content=True),
        add_generation_prompt=True,
        special_tokens=special,
        **conv.kwargs,
    )


@pytest.mark.parametrize("conv", HTTP_CONVERSATIONS, ids=lambda c: c.name)
@pytest.mark.parametrize("alias", sorted(MODELS))
def test_apply_template_renders_as_transformers(
    server: Server, special: dict[str, str], alias: str, conv: Conversation
) -> None:
    body: dict[str, Any] = {
        "model": alias,
        "messages": [openai_message(m) for m in conv.messages],
        "chat_template_kwargs": conv.kwargs,
    }
    before = datetime.now()
    r = httpx.post(f"{server.url}/apply-template", json=body, timeout=60)
    try:
        expected = _expected(MODELS[alias], conv, special)
    except Exception as exc:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "messages" and error["message"].endswith(f": {exc}")
        return
    assert r.status_code == 200, r.text
    got = r.json()["prompt"]
    if got != expected and before.date() != datetime.now().date():
        pytest.skip("the date changed between the two renders (strftime_now)")
    assert got == expected


def test_a_refused_conversation_is_a_400_through_the_sdk(server: Server) -> None:
    """Llama 3.2's template takes one call per turn: its own message, OpenAI's shape, no 500."""
    conv = next(c for c in CONVERSATIONS if c.name == "parallel_calls")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="llama32",
            messages=[openai_message(m) for m in conv.messages],  # type: ignore[misc]
            max_tokens=4,
        )
    assert info.value.status_code == 400
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "messages"
    assert error["message"].endswith("This model only supports single tool-calls at once!")
