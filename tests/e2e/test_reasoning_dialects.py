"""Thinking on every dialect: Anthropic thinking blocks, Ollama `thinking`, Responses reasoning
items, through the official SDKs, streamed and whole; equal to OpenAI chat's reasoning_content
for the same greedy turn. Meetings with stops, max_tokens, formats, tools and chains."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import Server, start_server, stop_server, wait_healthy
from tests.e2e.test_reasoning import MSGS, THINK_THEN_ANSWER, make_thinking_gguf

# Setting up (a GGUF rewrite and a server start) can take minutes on a busy shared machine.
pytestmark = pytest.mark.timeout(900)

# THINKING_TEMPLATE plus Qwen3-style re-rendering: an assistant turn's reasoning_content is
# written back inside <think> (one GGUF: rewriting one costs a while on a busy machine).
RERENDER_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' and m.get('reasoning_content') %}"
    "{{ '<think>\\n' + m['reasoning_content'] + '\\n</think>\\n\\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)
N = 12  # greedy tokens per turn: short, and long enough to think


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("thinking-dialects")
    thinker = make_thinking_gguf(model_path, tmp / "thinker.gguf", RERENDER_TEMPLATE)
    s = start_server(tmp, "--parallel", "4", "--alias", f"thinker={thinker}", wait=False)
    wait_healthy(s, timeout=600)  # shared CI machines can be slow to start a server
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def oai(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(srv: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def olla(srv: Server) -> ollama.Client:
    return ollama.Client(host=srv.url)


@pytest.fixture(scope="module")
def reference(oai: openai.OpenAI) -> tuple[str, str]:
    """OpenAI chat's greedy (reasoning_content, content) for MSGS: what every dialect must give."""
    r = oai.chat.completions.create(
        model="thinker",
        messages=MSGS,
        max_tokens=N,
        temperature=0,  # type: ignore[arg-type]
    )
    msg = r.choices[0].message
    reasoning = (msg.model_extra or {}).get("reasoning_content")
    assert isinstance(reasoning, str) and reasoning  # the prompt opened <think>
    return reasoning, msg.content or ""


# ---- Anthropic ----------------------------------------------------------------------------


def _claude(client: anthropic.Anthropic, **kw: Any) -> Any:
    # This SDK has no `temperature` parameter any more: it goes in the body.
    args: dict[str, Any] = {"model": "thinker", "max_tokens": N, "messages": MSGS}
    args["extra_body"] = {"temperature": 0}
    return client.messages.create(**(args | kw))


def test_anthropic_thinking_block_equals_openai_reasoning(
    claude: anthropic.Anthropic, reference: tuple[str, str]
) -> None:
    r = _claude(claude, thinking={"type": "adaptive"})
    first = r.content[0]
    assert first.type == "thinking"
    assert first.thinking == reference[0]
    assert first.signature == "edged-sha256:" + hashlib.sha256(first.thinking.encode()).hexdigest()
    text = "".join(b.text for b in r.content if b.type == "text")
    assert text == reference[1]


def test_anthropic_stream_matches_the_whole_message(claude: anthropic.Anthropic) -> None:
    whole = _claude(claude, thinking={"type": "adaptive"})
    kinds: list[str] = []
    with claude.messages.stream(
        model="thinker",
        max_tokens=N,
        messages=MSGS,  # type: ignore[arg-type]
        thinking={"type": "adaptive"},  # type: ignore[typeddict-item]
        extra_body={"temperature": 0},
    ) as stream:
        for ev in stream:
            if ev.type == "content_block_delta":
                kinds.append(ev.delta.type)
            elif ev.type == "content_block_start":
                kinds.append("start:" + ev.content_block.type)
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    assert kinds[0] == "start:thinking" and "thinking_delta" in kinds
    assert kinds.index("signature_delta") > kinds.index("thinking_delta")
    assert final.stop_reason == whole.stop_reason


def test_anthropic_budget_ends_thinking(claude: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    r = _claude(claude, max_tokens=40, thinking={"type": "enabled", "budget_tokens": 3})
    assert r.content[0].type == "thinking"
    assert r.stop_reason == "max_tokens"
    longer = oai.chat.completions.create(
        model="thinker",
        messages=MSGS,
        max_tokens=40,
        temperature=0,  # type: ignore[arg-type]
    )
    unbudgeted = longer.choices[0].message.model_extra["reasoning_content"]
    # Cut after three tokens of thinking: a strict prefix of the same greedy thinking.
    assert unbudgeted.startswith(r.content[0].thinking)
    assert len(r.content[0].thinking) < len(unbudgeted)


def test_anthropic_disabled_thinking_reaches_the_template(claude: anthropic.Anthropic) -> None:
    on = claude.messages.count_tokens(model="thinker", messages=MSGS)
    off = claude.messages.count_tokens(
        model="thinker", messages=MSGS, thinking={"type": "disabled"}
    )
    assert off.input_tokens > on.input_tokens  # the template closed an empty think block


def test_anthropic_thinking_history_reaches_the_template(claude: anthropic.Anthropic) -> None:
    said = [{"type": "text", "text": "Paris."}]
    thought = [{"type": "thinking", "thinking": "The capital is Paris.", "signature": "x"}]
    counts = {}
    for name, blocks in (("plain", said), ("thought", thought + said)):
        msgs = [*MSGS, {"role": "assistant", "content": blocks}, *MSGS]
        counts[name] = claude.messages.count_tokens(model="thinker", messages=msgs).input_tokens
    assert counts["thought"] > counts["plain"]  # the template renders it back
    redacted = [{"type": "redacted_thinking", "data": "opaque"}]
    msgs = [*MSGS, {"role": "assistant", "content": redacted + said}, *MSGS]
    assert _claude(claude, messages=msgs, max_tokens=2).content


@pytest.mark.parametrize(
    "thinking",
    [
        {"type": "enabled"},
        {"type": "enabled", "budget_tokens": N},
        {"type": "enabled", "budget_tokens": 0},
        {"type": "sometimes"},
    ],
)
def test_anthropic_bad_thinking_is_a_400(claude: anthropic.Anthropic, thinking: Any) -> None:
    with pytest.raises(anthropic.BadRequestError):
        _claude(claude, thinking=thinking)


# ---- Ollama -------------------------------------------------------------------------------


def test_ollama_chat_and_generate_thinking(olla: ollama.Client, reference: tuple[str, str]) -> None:
    opts = {"temperature": 0, "num_predict": N}
    r = olla.chat(model="thinker", messages=MSGS, think=True, options=opts)
    assert (r.message.thinking, r.message.content) == reference
    parts = list(olla.chat(model="thinker", messages=MSGS, think=True, options=opts, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == reference[0]
    assert "".join(p.message.content for p in parts) == reference[1]
    g = olla.generate(model="thinker", prompt=MSGS[0]["content"], think="high", options=opts)
    assert (g.thinking, g.response) == reference
    gs = list(olla.generate(model="thinker", prompt=MSGS[0]["content"], options=opts, stream=True))
    assert "".join(p.thinking or "" for p in gs) == reference[0]


def test_ollama_think_false_and_format(olla: ollama.Client) -> None:
    opts = {"temperature": 0, "num_predict": N}
    off = olla.chat(model="thinker", messages=MSGS, think=False, options=opts)
    on = olla.chat(model="thinker", messages=MSGS, think=True, options=opts)
    assert off.message.thinking is None
    assert off.prompt_eval_count > on.prompt_eval_count  # the template closed the block
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris"]}}, "required": ["city"]}
    fmt = olla.chat(model="thinker", messages=MSGS, think=True, format=schema, options=opts)
    assert fmt.message.thinking is None  # a format shapes the answer from its first token
    assert json.loads(fmt.message.content) == {"city": "Paris"}


def test_ollama_thinking_history_and_refusals(srv: Server, olla: ollama.Client) -> None:
    said = {"role": "assistant", "content": "Paris."}
    counts = {}
    for extra in ({}, {"thinking": "The capital is Paris."}):
        msgs = [*MSGS, said | extra, *MSGS]
        r = olla.chat(model="thinker", messages=msgs, options={"num_predict": 1})
        counts[bool(extra)] = r.prompt_eval_count
    assert counts[True] > counts[False]
    for path, body in (
        ("/api/chat", {"model": "thinker", "messages": MSGS, "think": "extreme"}),
        ("/api/generate", {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "x", "think": True}),
        ("/api/chat", {"model": "SmolLM2-135M-Instruct.Q4_1", "messages": MSGS, "think": "low"}),
    ):
        r = httpx.post(f"{srv.url}{path}", json=body, timeout=60)
        assert r.status_code == 400 and "think" in r.json()["error"], r.text


# ---- OpenAI Responses ---------------------------------------------------------------------


def test_responses_reasoning_item(oai: openai.OpenAI, reference: tuple[str, str]) -> None:
    r = oai.responses.create(
        model="thinker", input=MSGS[0]["content"], max_output_tokens=N, temperature=0,
        reasoning={"effort": "low", "summary": "auto"},
    )  # fmt: skip
    item = r.output[0]
    assert item.type == "reasoning" and item.summary == []
    assert item.content is not None and item.content[0].text == reference[0]
    assert r.output_text == reference[1]
    assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens > 0
    events = list(
        oai.responses.create(
            model="thinker",
            input=MSGS[0]["content"],
            max_output_tokens=N,
            temperature=0,
            stream=True,
        )
    )
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = [e.text for e in events if e.type == "response.reasoning_text.done"]
    assert deltas == reference[0] and done == [reference[0]]
    final = events[-1].response  # type: ignore[union-attr]
    assert next(o.model_dump() for o in final.output)["content"] == [
        c.model_dump() for c in item.content
    ]


def test_responses_chain_keeps_reasoning(oai: openai.OpenAI) -> None:
    """previous_response_id renders the kept reasoning as the same input sent whole does."""
    first = oai.responses.create(
        model="thinker", input=MSGS[0]["content"], max_output_tokens=N, temperature=0
    )
    chained = oai.responses.create(
        model="thinker", input="And of Italy?", previous_response_id=first.id,
        max_output_tokens=1,
    )  # fmt: skip
    sent = [
        {"role": "user", "content": MSGS[0]["content"]},
        *[o.model_dump(exclude_none=True) for o in first.output],
        {"role": "user", "content": "And of Italy?"},
    ]
    whole = oai.responses.create(model="thinker", input=sent, max_output_tokens=1, store=False)
    bare = oai.responses.create(
        model="thinker", input=[x for x in sent if x.get("type") != "reasoning"],
        max_output_tokens=1, store=False,
    )  # fmt: skip
    assert chained.usage and whole.usage and bare.usage
    assert whole.usage.input_tokens > bare.usage.input_tokens
    # A chain that resumes the kept state joins at the text level (keeping the model's own
    # tokens for its answer), so the count may differ by a token at the join.
    assert abs(chained.usage.input_tokens - whole.usage.input_tokens) <= 2
    assert chained.usage.input_tokens > bare.usage.input_tokens


# ---- OpenAI chat meetings -----------------------------------------------------------------


def _grammar_chat(oai: openai.OpenAI, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": "thinker", "messages": MSGS, "temperature": 0}
    return oai.chat.completions.create(**(args | kw))


def test_stop_and_max_tokens_cut_inside_thinking(oai: openai.OpenAI) -> None:
    stopped = _grammar_chat(oai, max_tokens=40, stop=["think."],
                            extra_body={"grammar": THINK_THEN_ANSWER})  # fmt: skip
    msg = stopped.choices[0].message
    assert stopped.choices[0].finish_reason == "stop"
    assert (msg.model_extra["reasoning_content"], msg.content) == ("Let me ", "")
    cut = _grammar_chat(oai, max_tokens=2, extra_body={"grammar": THINK_THEN_ANSWER})
    msg = cut.choices[0].message
    assert cut.choices[0].finish_reason == "length" and msg.content == ""
    assert "Let me think.".startswith(msg.model_extra["reasoning_content"])


def test_tool_call_after_thinking_streamed_and_whole(oai: openai.OpenAI) -> None:
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    grammar = f'root ::= "Let me check." "</think>" "\\n\\n" {json.dumps(call)}'
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    kw: dict[str, Any] = {"max_tokens": 60, "tools": [tool], "extra_body": {"grammar": grammar}}
    r = _grammar_chat(oai, **kw)
    msg = r.choices[0].message
    assert msg.model_extra["reasoning_content"] == "Let me check."
    assert [c.function.name for c in msg.tool_calls or []] == ["get_weather"]
    reasoning, names = "", []
    for chunk in _grammar_chat(oai, stream=True, **kw):
        for c in chunk.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            names += [t.function.name for t in c.delta.tool_calls or [] if t.function.name]
    assert (reasoning, names) == ("Let me check.", ["get_weather"])
