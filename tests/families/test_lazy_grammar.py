"""tool_choice auto: a call the model opens is held to its family's grammar from the family's
marker token on, and the text before it is free (the grammar is lazy, as llama-server's).

The embedded model carries Qwen 2.5's template (Hermes `<tool_call>` blocks) and Mistral
Nemo's (`[TOOL_CALLS]`) on a vocabulary where the markers are single control tokens, as in
the families' own vocabularies. A logit bias on the marker makes the model open a call; without
the grammar it then writes the marker again and again, never a call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from daemon.core import tools
from daemon.core.calls import parse_message
from daemon.core.families.grammars import call_trigger
from daemon.core.prompt import ChatPrompt, build_chat
from daemon.core.request import ChatRequest, FunctionSpec, Message
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.native.llama import Model
from daemon.engine.types import GenerationRequest, SamplingParams
from tests.conftest import Server, start_server, stop_server
from tests.families.conftest import template
from tests.families.markers import RENAMED, make_marker_gguf
from tests.families.test_grammars import CALLS, accepts
from tests.families.test_grammars import request as two_tools

# Two more of SmolLM2's unused control tokens become Hermes' call markers.
HERMES_MARKED = {**RENAMED, 10: "<tool_call>", 13: "</tool_call>"}
TOOL_CALL, TOOL_CALLS = 10, 7
CITY = {"type": "string", "enum": ["Paris", "London", "Tokyo"]}
WEATHER = FunctionSpec(
    "get_weather",
    "Current weather in a city",
    {"type": "object", "properties": {"city": CITY}, "required": ["city"]},
)
ASK = (Message("user", "What is the weather like in Paris? Answer in a sentence or call."),)


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory, smollm_gguf: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lazy")
    qwen = template("Qwen-Qwen2.5-7B-Instruct")
    nemo = template("mistralai-Mistral-Nemo-Instruct-2407")
    return {
        "qwen": make_marker_gguf(smollm_gguf, tmp / "qwen.gguf", qwen, HERMES_MARKED),
        "nemo": make_marker_gguf(smollm_gguf, tmp / "nemo.gguf", nemo),
        # The same template where `<tool_call>` is plain text: prose could spell the marker.
        "plain": make_marker_gguf(smollm_gguf, tmp / "plain.gguf", qwen, {}),
    }


@pytest.fixture(scope="module")
def smollm(smollm_gguf: Path) -> Iterator[Model]:
    m = Model(smollm_gguf)
    yield m
    m.close()


def _options(**kw: Any) -> EngineOptions:
    return EngineOptions(**{"ctx_size": 1024, "parallel": 2, "threads": 1, **kw})


@pytest.fixture(scope="module")
def qwen(ggufs: dict[str, Path]) -> Iterator[LoadedModel]:
    lm = LoadedModel("qwen", ggufs["qwen"], _options())
    yield lm
    lm.close()


def _chat(lm: LoadedModel, **kw: Any) -> ChatPrompt:
    return build_chat(lm, ChatRequest(messages=ASK, tools=(WEATHER,), **kw))


def _run(lm: LoadedModel, prompt: list[int], sampling: SamplingParams, n: int = 40) -> list[int]:
    async def main() -> list[int]:
        h = lm.submit(GenerationRequest(list(prompt), n, sampling, owner="a"))
        return [t async for c in h.chunks() for t in c.token_ids]

    return asyncio.run(main())


def _lazy(chat: ChatPrompt, base: SamplingParams) -> SamplingParams:
    trigger = chat.extras.grammar_trigger
    assert chat.extras.grammar is not None and trigger is not None
    return replace(base, grammar=chat.extras.grammar, grammar_triggers=(trigger,))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_the_trigger_opens_the_familys_documented_call(smollm: Model, name: str) -> None:
    """llama.cpp accepts the trigger token as the grammar's first piece, so the grammar must
    begin with the marker: each family's documented call (which its grammar accepts,
    test_grammars.py) starts with its trigger, and the auto plan's grammar with it too."""
    plan = tools.plan_tools(two_tools(), template(name))
    assert plan is not None
    marker = call_trigger(plan.fmt)
    if marker is None:
        pytest.skip(f"{plan.fmt.value}: no single marker opens its calls")
    assert CALLS[name].startswith(marker)
    lazy = tools.lazy_grammar(plan, True, lambda text: 5 if text == marker else None)
    assert lazy is not None and lazy[1] == 5
    assert accepts(smollm, lazy[0], CALLS[name])


def test_auto_gets_a_lazy_grammar_only_where_the_marker_is_one_token(
    qwen: LoadedModel, ggufs: dict[str, Path]
) -> None:
    chat = _chat(qwen)
    assert chat.extras.grammar_trigger == TOOL_CALL
    assert chat.extras.grammar is not None and chat.extras.grammar.startswith("root ::=")
    assert chat.plan is not None and chat.plan.grammar is None  # auto: nothing forced
    # Where no call can be made, or the answer has its own format, no call grammar.
    assert _chat(qwen, tool_choice="none").extras.grammar is None
    fmt = _chat(qwen, grammar='root ::= "yes" | "no"')
    assert fmt.extras.grammar == 'root ::= "yes" | "no"' and fmt.extras.grammar_trigger is None
    plain = LoadedModel("plain", ggufs["plain"], _options(parallel=1))
    try:
        chat = _chat(plain)
        assert chat.extras.grammar is None and chat.extras.grammar_trigger is None
    finally:
        plain.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_before_its_marker_the_grammar_changes_nothing(qwen: LoadedModel, seed: int) -> None:
    """Sampled text without the marker is token for token the text with no grammar at all."""
    chat = _chat(qwen)
    free = SamplingParams(temperature=0.9, seed=seed, logit_bias=((TOOL_CALL, -100.0),))
    assert _run(qwen, chat.tokens, _lazy(chat, free)) == _run(qwen, chat.tokens, free)


def _called(lm: LoadedModel, chat: ChatPrompt, tokens: list[int]) -> list[tuple[str, Any]]:
    text = lm.model.detokenize(tokens, special=True)
    _, calls = parse_message(chat.plan, text)
    return [(c.name, json.loads(c.arguments)) for c in calls]


def test_a_call_it_opens_is_held_to_the_grammar(qwen: LoadedModel) -> None:
    chat = _chat(qwen)
    pushed = SamplingParams(temperature=0.0, logit_bias=((TOOL_CALL, 100.0),))
    free = _run(qwen, chat.tokens, pushed, 60)
    assert free[:2] == [TOOL_CALL, TOOL_CALL]  # the bias alone: markers, no call
    assert _called(qwen, chat, free) == []
    held = _run(qwen, chat.tokens, _lazy(chat, pushed), 60)
    assert held[0] == TOOL_CALL
    (call,) = _called(qwen, chat, held)
    assert call[0] == "get_weather" and call[1]["city"] in CITY["enum"]


def test_speculation_keeps_the_lazy_grammars_tokens(
    qwen: LoadedModel, ggufs: dict[str, Path]
) -> None:
    """Drafts are verified through the request's own chain, grammar stage included."""
    spec = LoadedModel("spec", ggufs["qwen"], _options(speculate=True, speculate_always=True))
    try:
        chat = _chat(qwen)
        for bias in (100.0, -100.0):
            sp = _lazy(chat, SamplingParams(temperature=0.0, logit_bias=((TOOL_CALL, bias),)))
            assert _run(spec, chat.tokens, sp, 60) == _run(qwen, chat.tokens, sp, 60)
    finally:
        spec.close()


# ---- on a real daemon, through the official SDK -------------------------------------------

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": WEATHER.name,
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
]
MSGS: list[Any] = [{"role": "user", "content": ASK[0].content}]
MARKERS = {"qwen": TOOL_CALL, "nemo": TOOL_CALLS}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ggufs: dict[str, Path]) -> Iterator[Server]:
    args = [a for alias in MARKERS for a in ("--alias", f"{alias}={ggufs[alias]}")]
    srv = start_server(tmp_path_factory.mktemp("lazy_http"), "--parallel", "2", *args)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _city(arguments: str) -> str:
    args = json.loads(arguments)
    assert set(args) == {"city"} and args["city"] in CITY["enum"]
    return str(args["city"])


@pytest.mark.parametrize("alias", sorted(MARKERS))
def test_auto_call_through_the_sdk_whole_streamed_and_n2(client: openai.OpenAI, alias: str) -> None:
    ask: dict[str, Any] = {
        "model": alias,
        "messages": MSGS,
        "tools": TOOLS,
        "tool_choice": "auto",
        "temperature": 0,
        "max_tokens": 60,
        "logit_bias": {str(MARKERS[alias]): 100},
    }
    out = client.chat.completions.create(**ask)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    city = _city(call.function.arguments)

    pieces: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for chunk in client.chat.completions.create(**ask, stream=True):
        for delta_call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            fn = delta_call.function
            if fn is not None and fn.name:
                names[delta_call.index] = fn.name
            if fn is not None and fn.arguments:
                pieces.setdefault(delta_call.index, []).append(fn.arguments)
    assert names == {0: "get_weather"}
    assert _city("".join(pieces[0])) == city

    both = client.chat.completions.create(**ask, n=2)
    assert [_city((c.message.tool_calls or [])[0].function.arguments) for c in both.choices] == [
        city,
        city,
    ]
