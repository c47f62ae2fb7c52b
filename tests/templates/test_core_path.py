"""The path from a request to the template: OpenAI-shaped messages → core ChatRequest →
`build_chat` (the tool plan, `prompt_messages`, template variables, the model's template) →
text, compared with transformers rendering the same conversation in its own convention.

The model is the embedded SmolLM2 (a real LoadedModel); each corpus template takes the place
of its own, so `build_chat` renders and tokenizes exactly as a request would.
What differs, and why, is pinned here and listed in docs/templates.md:

- call-only assistant turns reach the template with `content: ""` (OpenAI's `null` becomes the
  core's empty text), where transformers drops the key: templates that read `content`
  (Qwen3, QwQ, DeepSeek R1 distills, Granite 3.3, Phi-3.5, Devstral, LFM2) render through
  edged and raise in transformers; everywhere else the two are the same text;
- tool results carry no `name` (OpenAI's tool messages have none); no corpus template's text
  depends on it for these conversations;
- templates that list no tools get edged's own tool section and call blocks (the generic or
  DeepSeek prompt of core/tools.py), which transformers' rendering has no counterpart for;
- core/tools.py's `Function.spec` lists a function's keys as name, parameters, description,
  where OpenAI's wire format and transformers list name, description, parameters; templates
  print tools with `tojson`, so the model sees the keys in another order than in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from daemon.api.messages import ChatMessage, Tool, core_functions, core_message
from daemon.core import tools as core_tools
from daemon.core.prompt import build_chat
from daemon.core.request import ChatRequest
from daemon.engine.errors import InvalidInput
from daemon.engine.loading.chat_template import ChatTemplate
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from tests.templates.conversations import CONVERSATIONS, Conversation
from tests.templates.reference import frozen_clock, hf_render

CORPUS = Path(__file__).parent / "corpus"
TEMPLATES = sorted(p.stem for p in CORPUS.glob("*.jinja"))
SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}
# The conversations with tool calls in their history, and some without for contrast.
PATH_CONVERSATIONS = tuple(
    c
    for c in CONVERSATIONS
    if c.name
    in {
        "tool_call_history",
        "parallel_calls",
        "calls_then_answer",
        "openai_call_ids",
        "tools_offered",
        "reasoning_history",
        "multi_turn",
    }
)


def source(name: str) -> str:
    return (CORPUS / f"{name}.jinja").read_text(encoding="utf-8")


def openai_message(m: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face-convention message as an OpenAI client sends it: arguments as JSON text,
    `content: null` on a call-only turn, no `name` on a tool result."""
    out: dict[str, Any] = {"role": m["role"], "content": m.get("content")}
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
                },
            }
            for c in m["tool_calls"]
        ]
    if m["role"] == "tool":
        out["tool_call_id"] = m["tool_call_id"]
    if "reasoning_content" in m:
        out["reasoning_content"] = m["reasoning_content"]
    return out


def core_request(conv: Conversation) -> ChatRequest:
    """The conversation as OpenAI chat's translation builds it (api/messages.py)."""
    wire = [ChatMessage.model_validate(openai_message(m)) for m in conv.messages]
    tools = [Tool.model_validate(t) for t in conv.tools or ()]
    return ChatRequest(
        messages=tuple(core_message(m) for m in wire),
        tools=core_functions(tools),
        tool_choice="auto" if tools else None,
        template_kwargs=dict(conv.kwargs),
    )


# Templates that take call arguments as JSON text (edged gives them text; transformers'
# convention, an object, fails there).
TEXT_ARGUMENTS = frozenset({"meetkai-functionary-medium-v3.2"})


def _texted(m: dict[str, Any]) -> dict[str, Any]:
    if not m.get("tool_calls"):
        return m
    calls = [
        {
            **c,
            "function": {
                **c["function"],
                "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
            },
        }
        for c in m["tool_calls"]
    ]
    return {**m, "tool_calls": calls}


def hf_convention(
    conv: Conversation, *, empty_content: bool, text_arguments: bool = False
) -> list[dict[str, Any]]:
    """The conversation in transformers' convention; with `empty_content`, call-only turns
    say `content: ""` as edged's core gives them; with `text_arguments`, calls carry their
    arguments as JSON text."""
    msgs = conv.messages
    if text_arguments:
        msgs = [_texted(m) for m in msgs]
    if not empty_content:
        return msgs
    return [{**m, "content": ""} if m.get("tool_calls") and "content" not in m else m for m in msgs]


def in_core_order(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """The tools with each function's keys in the order core/tools.py's `Function.spec` writes
    them (its only difference from the request's tools: see test_function_keys_in_wire_order)."""
    if tools is None:
        return None
    out = []
    for t in tools:
        fn = t["function"]
        spec = core_tools.Function(fn["name"], fn.get("description"), fn["parameters"]).spec()
        assert spec["function"] == fn  # the same keys and values, perhaps in another order
        out.append(spec)
    return out


@pytest.fixture(scope="module")
def smol(smollm_gguf: Path) -> Iterator[LoadedModel]:
    lm = LoadedModel("smol", smollm_gguf, EngineOptions(ctx_size=4096, parallel=1))
    try:
        yield lm
    finally:
        lm.close()


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with frozen_clock(monkeypatch):
        yield


def through_edged(lm: LoadedModel, name: str, conv: Conversation) -> str:
    """What `build_chat` renders for the conversation under template `name`."""
    lm.template = ChatTemplate(source(name), **SPECIAL)
    return build_chat(lm, core_request(conv)).rendered


def _hf(name: str, conv: Conversation, *, empty_content: bool, core_order: bool) -> str:
    tools = in_core_order(conv.tools) if core_order else conv.tools
    return hf_render(
        source(name),
        hf_convention(conv, empty_content=empty_content, text_arguments=name in TEXT_ARGUMENTS),
        add_generation_prompt=True,
        tools=tools,
        special_tokens=SPECIAL,
        **conv.kwargs,
    )


# Tool-aware templates that read `content` on call-only assistant turns.
NEEDS_CONTENT = frozenset(
    {
        "Qwen-QwQ-32B",
        "Qwen-Qwen3-0.6B",
        "ibm-granite-granite-3.3-2B-Instruct",
        "unsloth-mistral-Devstral-Small-2507",
        "LFM2-8B-A1B",
        "LFM2.5-Instruct",
    }
)
NATIVE = [t for t in TEMPLATES if core_tools.template_supports_tools(source(t))]
PROMPTED = [t for t in TEMPLATES if t not in NATIVE]


@pytest.mark.parametrize("conv", PATH_CONVERSATIONS, ids=lambda c: c.name)
@pytest.mark.parametrize("name", NATIVE)
def test_native_tool_templates_render_as_transformers(
    smol: LoadedModel, name: str, conv: Conversation
) -> None:
    """Templates that lay out tools themselves: the same text as transformers, given the
    conversation with call-only turns' `content: ""` and the core's key order."""
    try:
        expected = _hf(name, conv, empty_content=True, core_order=True)
    except Exception as exc:
        # The template cannot render this conversation in either (test_corpus.py says why).
        with pytest.raises(InvalidInput) as info:
            through_edged(smol, name, conv)
        assert str(info.value).endswith(f": {exc}")
        return
    assert through_edged(smol, name, conv) == expected
    try:
        as_sent = _hf(name, conv, empty_content=False, core_order=True)
    except Exception:
        # transformers needs `content` on call-only turns here; edged always gives it.
        assert name in NEEDS_CONTENT and any(m.get("tool_calls") for m in conv.messages)
        return
    assert as_sent == expected, "an empty content renders as an absent one"


# Templates that list no tools and refuse the messages edged's tool prompt makes of them.
PROMPTED_RAISES = {
    # Its tools come in a `functions` variable (JSON text) that no dialect sets.
    "fireworks-ai-llama-3-firefunction-v2": "'functions' is undefined",
    # The conversation has a system turn, which Gemma 2 refuses whatever edged does (as in
    # transformers); without one the tool section opens the first user turn (test below).
    "google-gemma-2-2b-it": "System role not supported",
}


@pytest.mark.parametrize("name", PROMPTED)
def test_templates_without_tools_get_edged_s_tool_prompt(smol: LoadedModel, name: str) -> None:
    """Templates that list no tools: edged's tool section, the calls in the family's or the
    generic markup; each message still renders as transformers renders that message list."""
    conv = next(c for c in CONVERSATIONS if c.name == "tool_call_history")
    if name in PROMPTED_RAISES:
        with pytest.raises(InvalidInput, match=f"chat template failed: {PROMPTED_RAISES[name]}"):
            through_edged(smol, name, conv)
        return
    rendered = through_edged(smol, name, conv)
    assert "get_weather" in rendered and "search" in rendered  # the tools are listed
    req = core_request(conv)
    src = source(name)
    plan = core_tools.plan_tools(req, src)
    msgs, variables = core_tools.prompt_messages(req.messages, plan, src)
    expected = hf_render(src, msgs, add_generation_prompt=True, special_tokens=SPECIAL, **variables)
    assert rendered == expected


def test_a_template_refusing_system_turns_gets_the_tools_in_the_first_user_turn(
    smol: LoadedModel,
) -> None:
    """Gemma 2 raises on any system turn: with tools and no system turn of the caller's,
    edged's tool section opens the first user turn (as llama.cpp folds it) instead of a
    system turn of its own, and the conversation renders."""
    name = "google-gemma-2-2b-it"
    conv = next(c for c in CONVERSATIONS if c.name == "tool_call_history")
    conv = replace(conv, messages=[m for m in conv.messages if m["role"] != "system"])
    rendered = through_edged(smol, name, conv)
    first_user = rendered.index("<start_of_turn>user")
    assert rendered.index("get_weather") > first_user
    assert "<start_of_turn>system" not in rendered


def test_function_keys_in_wire_order() -> None:
    fn = core_tools.Function("f", "does f", {"type": "object", "properties": {}})
    assert list(fn.spec()["function"]) == ["name", "description", "parameters"]


def test_call_arguments_reach_templates_as_objects(smol: LoadedModel) -> None:
    """OpenAI's JSON-text arguments reach the template as a dict (transformers' convention),
    so `tojson` writes them once, not as a quoted string."""
    conv = next(c for c in CONVERSATIONS if c.name == "tool_call_history")
    rendered = through_edged(smol, "Qwen-Qwen2.5-7B-Instruct", conv)
    assert '"arguments": {"city": "Zürich", "unit": "celsius"}' in rendered
    assert '\\"city\\"' not in rendered


@pytest.mark.parametrize("name", TEMPLATES)
def test_text_parts_reach_templates_joined(smol: LoadedModel, name: str) -> None:
    """A message's text parts reach the template as one string, joined with a newline (none
    next to an image), as llama.cpp joins them (api/messages.py `ChatMessage.text`):
    transformers hands the template the list, which Granite 4 joins with newlines, Reka Edge
    with spaces, and many templates print as a Python list. Through edged every template gets
    the text."""
    conv = next(c for c in CONVERSATIONS if c.name == "multipart")
    joined = [
        m
        if isinstance(m["content"], str)
        else {**m, "content": "\n".join(p["text"] for p in m["content"])}
        for m in conv.messages
    ]
    assert joined[1]["content"] == "Describe Zürich\nin three words."
    try:
        expected = hf_render(
            source(name), joined, add_generation_prompt=True, special_tokens=SPECIAL
        )
    except Exception as exc:
        with pytest.raises(InvalidInput) as info:
            through_edged(smol, name, conv)
        assert str(info.value).endswith(f": {exc}")
        return
    assert through_edged(smol, name, conv) == expected
