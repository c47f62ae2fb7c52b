"""A call's arguments stream as the model writes them: for every family's documented output,
in every chunking, the argument pieces join into the call's arguments, the events are the
whole text's (but for where the pieces fall), and the calls are the non-streamed parse's."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest

from daemon.core import tools
from daemon.core.calls import CallArgs, CallStart, ToolCall, parse_message
from daemon.core.families.streamed import JsonScan
from daemon.core.reasoning import Thinking, detect
from daemon.core.turns import Reasoning, TurnParser
from tests.families.conftest import chunkings, template
from tests.families.test_parsers import CASES, _plan

# Families whose arguments stream while written; the others send them whole when read.
STREAMED = {
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "ibm-granite-granite-3.3-2B-Instruct",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "Qwen-Qwen2.5-7B-Instruct",
    "Qwen-Qwen3-0.6B",
    "Qwen3-Coder",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "unsloth-mistral-Devstral-Small-2507",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai-DeepSeek-V3.1",
    "openai-gpt-oss-120b",
    "meetkai-functionary-medium-v3.1",
    "meetkai-functionary-medium-v3.2",
}
Normal = list[tuple[str, object]]


def _events(name: str, pieces: list[str], started: bool = False) -> list[object]:
    style = detect(template(name))
    parser = TurnParser(_plan(name), None if style is None else Thinking(style, started))
    return [e for p in pieces for e in parser.push(p)] + parser.finish()


def _normal(events: list[object]) -> Normal:
    """The events with neighbouring text and argument pieces joined, ids left out."""
    out: Normal = []
    for e in events:
        if isinstance(e, Reasoning):
            item: tuple[str, object] = ("reasoning", e.text)
        elif isinstance(e, str):
            item = ("text", e)
        elif isinstance(e, CallStart):
            item = ("start", (e.index, e.name))
        elif isinstance(e, CallArgs):
            item = ("args", (e.index, e.text))
        else:
            assert isinstance(e, ToolCall)
            item = ("call", (e.name, e.arguments))
        last = out[-1] if out else None
        if last is not None and last[0] == item[0] and item[0] in ("reasoning", "text"):
            out[-1] = (item[0], str(last[1]) + str(item[1]))
        elif last is not None and item[0] == "args" and last[0] == "args":
            (k, a), (j, b) = last[1], item[1]  # type: ignore[misc]
            assert k == j
            out[-1] = ("args", (k, a + b))
        else:
            out.append(item)
    return out


def _few_pieces(text: str, seed: int) -> Iterator[list[str]]:
    """Cuttings of the text into three and four pieces, drawn the same every run."""
    rnd = random.Random(seed)
    for _ in range(40):
        k = rnd.choice((2, 3))
        cuts = sorted(rnd.sample(range(1, len(text)), k))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def _check_calls(events: list[object]) -> list[ToolCall]:
    """Each call begins, streams its arguments and ends, in order; returns the calls."""
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    ended: list[ToolCall] = []
    for e in events:
        if isinstance(e, CallStart):
            assert e.index == len(names)
            names[e.index], ids[e.index], args[e.index] = e.name, e.id, ""
        elif isinstance(e, CallArgs):
            assert e.index in names and e.index == len(ended)
            args[e.index] += e.text
        elif isinstance(e, ToolCall):
            k = len(ended)
            assert (e.name, e.id, e.arguments) == (names[k], ids[k], args[k])
            assert isinstance(json.loads(e.arguments), dict)
            ended.append(e)
    assert len(ended) == len(names)
    return ended


@pytest.mark.parametrize("case", range(len(CASES)))
def test_streamed_events_are_the_whole_texts(case: int) -> None:
    name, started, text, _, _, calls = CASES[case]
    whole = _events(name, [text], started)
    expected = _normal(whole)
    assert [(c.name, c.arguments) for c in _check_calls(whole)] == calls
    _, answer = Thinking(s, started).split(text) if (s := detect(template(name))) else (None, text)
    _, parsed = parse_message(_plan(name), answer)
    assert [(c.name, c.arguments) for c in parsed] == calls  # the non-streamed arguments
    for pieces in [*chunkings(text), *_few_pieces(text, case)]:
        events = _events(name, pieces, started)
        _check_calls(events)
        assert _normal(events) == expected, pieces


@pytest.mark.parametrize("case", [i for i, c in enumerate(CASES) if c[5]])
def test_arguments_arrive_in_pieces_where_the_family_streams(case: int) -> None:
    name, started, text, *_ = CASES[case]
    events = _events(name, list(text), started)
    pieces = [sum(isinstance(e, CallArgs) and e.index == k for e in events) for k in range(2)]
    if name in STREAMED and ".call(" not in text:  # Llama 3's builtin calls are read whole
        assert pieces[0] > 1  # `{`, then the key, then the value as it is written ...
    else:
        assert pieces[0] == 1  # read when the block ends, sent whole


# (template, output, arguments of the call that began): a call that began is a call, its
# arguments closed into valid JSON, whatever the text did after it began.
HERMES, QWEN3 = "Qwen-Qwen2.5-7B-Instruct", "Qwen3-Coder"
H = '<tool_call>{"name": "get_time", "arguments": '
XML = "<tool_call>\n<function=get_weather>\n"
V31 = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>"
BEGUN = [
    (HERMES, H + '{"city": "Pa', '{"city": "Pa"}'),  # cut short (max_tokens)
    (HERMES, H + '{"tz": 1 "x"}}</tool_call>', '{"tz": 1}'),  # malformed
    (HERMES, H + '{"a": [1, tru</tool_call>', '{"a": [1]}'),
    (HERMES, H + '{"code": "a\nb"}}</tool_call>', '{"code": "a\\nb"}'),  # raw newline escaped
    (HERMES, H + '{"s": "</tool_call>"}}</tool_call>', '{"s": ""}'),  # the block ends early
    (HERMES, H + '{"k', '{"k": null}'),
    (QWEN3, XML + "<parameter=city>\nParis\n</tool_call>", '{"city": "Paris"}'),
    (QWEN3, XML + "<parameter=days>\n3", '{"days": 3}'),
    (QWEN3, XML + "<parameter=city>\nRome\n</param", '{"city": "Rome"}'),
    (QWEN3, XML + "stray text\n</function></tool_call>", "{}"),
    ("meetkai-functionary-medium-v3.1", "<function=get_weather>{bad</function>", "{}"),
    ("deepseek-ai-DeepSeek-V3.1", V31 + '{"a": "b\\', '{"a": "b"}'),
]


@pytest.mark.parametrize(("name", "text", "args"), BEGUN)
def test_a_call_that_began_ends_as_that_call(name: str, text: str, args: str) -> None:
    expected = _normal(_events(name, [text]))
    for pieces in [*chunkings(text), *_few_pieces(text, 7)]:
        events = _events(name, pieces)
        assert [c.arguments for c in _check_calls(events)] == [args], pieces
        assert _normal(events) == expected, pieces
    content, calls = parse_message(_plan(name), text)
    assert calls[0].arguments == args
    # No markup is left as text; only what follows a block that closed early is.
    assert content is None or content == '"}}</tool_call>'


def test_qwen3_xml_string_values_stream_as_written() -> None:
    name = "Qwen3-Coder"
    text = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan\nJosé\n\n</parameter>\n"
        "<parameter=days>\n12\n</parameter>\n</function>\n</tool_call>"
    )
    events = _events(name, list(text))
    pieces = [e.text for e in events if isinstance(e, CallArgs)]
    assert "".join(pieces) == json.dumps({"city": "San\nJosé\n", "days": 12}, ensure_ascii=False)
    assert '"S' in pieces and "a" in pieces  # the string's characters, one by one
    assert "12" in pieces  # a number, whole at its end tag


@pytest.mark.parametrize(
    "doc",
    [
        {"a": 1, "b": [True, False, None, -1.5e3, 'x\\y"z'], "c": {"d": {}, "e": []}},
        {"path": "/tmp/é", "code": "def f():\n\treturn '\\u00e9'\n", "n": 0},
        {},
    ],
)
def test_json_reading_is_certain_at_every_prefix(doc: dict[str, object]) -> None:
    for indent in (None, 2):
        text = json.dumps(doc, indent=indent)
        prev = ""
        for i in range(1, len(text) + 1):
            scan = JsonScan()
            assert scan.feed(text[:i]) == i
            assert scan.certain.startswith(prev) and text.startswith(scan.certain)
            prev = scan.certain
            assert isinstance(json.loads(scan.final()), dict)  # always closable into an object
        scan = JsonScan()
        assert scan.feed(text + " trailing") == len(text) and scan.done
        assert scan.final() == text


def test_arguments_text_is_the_models_own_where_streamed() -> None:
    # Mistral Nemo's array is read whole (its id follows the arguments): re-encoded.
    nemo = _plan("mistralai-Mistral-Nemo-Instruct-2407")
    _, calls = parse_message(nemo, '[TOOL_CALLS][{"name": "get_time", "arguments": {"tz":"UTC"}}]')
    assert calls[0].arguments == '{"tz": "UTC"}'
    # A streamed family sends the model's own text (here without spaces), streamed or not; so
    # does one whose call is read whole because its keys come in another order.
    hermes = _plan("Qwen-Qwen2.5-7B-Instruct")
    assert hermes.fmt is tools.ToolFormat.HERMES
    for body, args in [
        ('{"name": "get_time", "arguments": {"tz":"UTC"}}', '{"tz":"UTC"}'),
        ('{"arguments": {"tz":"UTC"}, "name": "get_time"}', '{"tz": "UTC"}'),
    ]:
        text = f"<tool_call>{body}</tool_call>"
        _, calls = parse_message(hermes, text)
        assert calls[0].arguments == args
        streamed = _events("Qwen-Qwen2.5-7B-Instruct", list(text))
        assert "".join(e.text for e in streamed if isinstance(e, CallArgs)) == args


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "ibm-granite-granite-3.3-2B-Instruct",
            '<|tool_call|>[{"name": "get_time", "arguments": {"tz": "UTC"}}, '
            '{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        ),
        (
            "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
            '<|START_ACTION|>[{"tool_call_id": "0", "tool_name": "get_time", "parameters": '
            '{"tz": "UTC"}}, {"tool_call_id": "1", "tool_name": "get_weather", "parameters": '
            '{"city": "Paris"}}]<|END_ACTION|>',
        ),
        (
            "meta-llama-Llama-3.1-8B-Instruct",
            '{"name": "get_time", "parameters": {"tz": "UTC"}} ok',
        ),
        (
            "Qwen3-Coder",  # a JSON body in Qwen3-Coder's block
            '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>',
        ),
    ],
)
def test_call_lists_stream_call_by_call(name: str, text: str) -> None:
    expected = _normal(_events(name, [text]))
    for pieces in [*chunkings(text), *_few_pieces(text, 3)]:
        events = _events(name, pieces)
        assert _normal(events) == expected, pieces
    by_char = _events(name, list(text))
    calls = [(c.name, json.loads(c.arguments)) for c in _check_calls(by_char)]
    assert sum(isinstance(e, CallArgs) for e in by_char) > 2 * len(calls)  # in pieces
    assert calls == [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "Paris"})][: len(calls)]
    assert len(calls) == (2 if "granite" in name or "command" in name else 1)
    content, parsed = parse_message(_plan(name), text)
    assert content is None and [(c.name, json.loads(c.arguments)) for c in parsed] == calls
