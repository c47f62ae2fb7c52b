"""What a model family is: its call syntax, its reasoning markers, and the values they share."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.core.families.streamed import CallScan


class ToolFormat(str, Enum):
    """How a model writes its calls."""

    HERMES = "hermes"  # <tool_call>{"name", "arguments"}</tool_call> blocks (Qwen, Hermes, generic)
    LLAMA3 = "llama3"  # one bare {"name", "parameters"} object, or <|python_tag|>
    MISTRAL = "mistral"  # [TOOL_CALLS] then a JSON array of {"name", "arguments"}
    MISTRAL_ARGS = "mistral-args"  # [TOOL_CALLS]NAME[ARGS]{..} (Small 3.2, Devstral, Magistral)
    QWEN3_XML = "qwen3-xml"  # <tool_call><function=NAME><parameter=P>v</parameter>...
    DEEPSEEK_R1 = "deepseek-r1"  # <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json...
    DEEPSEEK_V31 = "deepseek-v3.1"  # <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{..}<｜tool▁call▁end｜>
    HARMONY = "harmony"  # gpt-oss: <|channel|>commentary to=functions.NAME ...<|message|>{..}
    COMMAND_R7B = "command-r7b"  # <|START_ACTION|>[{"tool_name", "parameters"}]<|END_ACTION|>
    GRANITE = "granite"  # <|tool_call|>[{"name", "arguments"}]
    FUNCTIONARY_V31 = "functionary-v3.1"  # <function=NAME>{..}</function>
    FUNCTIONARY_V32 = "functionary-v3.2"  # >>>NAME\n{..}


@dataclass(frozen=True)
class ThinkTags:
    """The markers around a model's reasoning, and any around its answer (dropped from it)."""

    open: str = "<think>"
    close: str = "</think>"
    answer_open: str = ""  # Granite's <response>, Command R7B's <|START_RESPONSE|>
    answer_close: str = ""


@dataclass(frozen=True)
class Harmony:
    """gpt-oss's harmony messages: `analysis` is reasoning, `final` the answer, a message with a
    recipient (`to=functions.NAME`) a call."""

    open: str = "<|channel|>analysis<|message|>"  # how a reasoning message starts


ReasoningStyle = ThinkTags | Harmony


@dataclass(frozen=True)
class RawCall:
    """A call as a family's syntax wrote it: name, decoded arguments, the model's own id."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class CallContext:
    """What a syntax may consult while parsing: the callable names and their schemas."""

    allowed: frozenset[str]
    schemas: Mapping[str, dict[str, Any]] = field(default_factory=dict)


class Syntax:
    """A family's call markup, read in blocks: an opener, a body, an end.

    `openers` open a block anywhere in the answer, `leading` ones only at its start (after
    whitespace). `initial` is an opener the generation prompt already wrote (the output starts
    inside its block). A block ends where `close` says, else at the end of the output.
    A syntax with a `scan` reads its calls while the block streams (see `streamed.py`); `ends`
    are the markers that end its blocks, which that reader never sees.
    """

    openers: tuple[str, ...] = ()
    leading: tuple[str, ...] = ()
    initial: str | None = None
    closed: bool = False  # a block needs its end marker: one cut short is no call
    ends: tuple[str, ...] = ()

    def close(self, opener: str, body: str) -> int | None:
        """Length of `body` the block takes once it is complete; None while it may go on."""
        return None

    def passthrough(self, opener: str, body: str) -> int | None:
        """For a block that turns out to be text: the length of its header (dropped); None when
        the block is (or may still be) a call. -1 while the body is too short to tell."""
        return None

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        """The calls of a complete block; None when it is not calls of allowed functions."""
        raise NotImplementedError

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        """A reader of the block's calls while it streams; None: they are read when it ends."""
        return None


def held(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of the markers."""
    best = 0
    for marker in markers:
        for n in range(min(len(text), len(marker) - 1), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


def json_object(text: str) -> dict[str, Any] | None:
    """`text` as one JSON object (surrounding whitespace allowed), else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def arguments(value: Any) -> dict[str, Any] | None:
    """A call's arguments as an object: given as one, or as JSON text of one."""
    if isinstance(value, str):
        return json_object(value)
    return value if isinstance(value, dict) else None


def named_call(
    obj: Any, ctx: CallContext, name_key: str = "name", keys: tuple[str, ...] = ("arguments",)
) -> RawCall | None:
    """A call from a decoded `{name_key: NAME, key: ARGS}` object of an allowed function."""
    if not isinstance(obj, dict):
        return None
    name = obj.get(name_key)
    if not isinstance(name, str) or name not in ctx.allowed:
        return None
    raw = next((obj[k] for k in keys if k in obj), {})
    args = arguments(raw)
    if args is None:
        return None
    call_id = obj.get("id")
    return RawCall(name, args, call_id if isinstance(call_id, str) else None)


def call_list(items: Any, ctx: CallContext, **kw: Any) -> list[RawCall] | None:
    """Every item of a decoded JSON array as a call, or None if any is not one."""
    if not isinstance(items, list) or not items:
        return None
    calls = [named_call(v, ctx, **kw) for v in items]
    if any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def after(text: str, marker: str) -> int | None:
    """The end of the first `marker` in text (a block's length up to its end marker)."""
    at = text.find(marker)
    return None if at < 0 else at + len(marker)
