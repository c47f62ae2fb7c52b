"""Which family a chat template belongs to, told by the markup the template itself writes.

Rules are data, tried in order; the first whose markers all appear in the template wins. A
template no rule matches is `generic`: edged's own tool prompt and `<tool_call>` blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from daemon.core.families.base import Harmony, ReasoningStyle, Syntax, ThinkTags, ToolFormat
from daemon.core.families.deepseek import DeepSeek
from daemon.core.families.functionary import FunctionaryV32
from daemon.core.families.harmony import HarmonyCalls
from daemon.core.families.jsoncalls import CommandR7B, Granite, Hermes, Llama3, Mistral, MistralArgs
from daemon.core.families.xmlcalls import FunctionaryV31, Qwen3Xml

GENERIC = "generic"


@dataclass(frozen=True)
class Rule:
    """A family and the markers that tell its template (any one of the sets, all of a set)."""

    family: str
    fmt: ToolFormat
    markers: tuple[tuple[str, ...], ...]

    def matches(self, template: str) -> bool:
        return any(all(m in template for m in group) for group in self.markers)


RULES: tuple[Rule, ...] = (
    Rule("gpt-oss", ToolFormat.HARMONY, (("<|channel|>", "<|message|>"),)),
    Rule("command-r7b", ToolFormat.COMMAND_R7B, (("<|START_ACTION|>",),)),
    Rule("deepseek-r1", ToolFormat.DEEPSEEK_R1, (("tool▁calls▁begin", "```json"),)),
    Rule("deepseek-v3.1", ToolFormat.DEEPSEEK_V31, (("tool▁calls▁begin",),)),
    Rule("functionary-v3.2", ToolFormat.FUNCTIONARY_V32, ((">>>all",),)),
    Rule("functionary-v3.1", ToolFormat.FUNCTIONARY_V31, (("<function=", "<|python_tag|>"),)),
    Rule("qwen3-coder", ToolFormat.QWEN3_XML, (("<tool_call>", "<function="),)),
    Rule("granite", ToolFormat.GRANITE, (("<|tool_call|>",),)),
    Rule("mistral", ToolFormat.MISTRAL_ARGS, (("[TOOL_CALLS]", "[ARGS]"),)),
    Rule("mistral-nemo", ToolFormat.MISTRAL, (("[TOOL_CALLS]",),)),
    Rule("hermes", ToolFormat.HERMES, (("<tool_call>",),)),
    Rule("llama3", ToolFormat.LLAMA3, (("<|python_tag|>",), ("ipython", "<|start_header_id|>"))),
)

# Reasoning markers, tried in order like the families.
COMMAND_R = ThinkTags(
    "<|START_THINKING|>", "<|END_THINKING|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"
)
GRANITE = ThinkTags("<think>", "</think>", "<response>", "</response>")
THINKING: tuple[tuple[tuple[str, ...], ReasoningStyle], ...] = (
    (("<|channel|>", "<|message|>"), Harmony()),
    (("<|START_THINKING|>", "<|END_THINKING|>"), COMMAND_R),
    (("<think>", "</think>", "<response>", "</response>"), GRANITE),
    (("<think>", "</think>"), ThinkTags()),
)

SYNTAXES: dict[ToolFormat, Syntax] = {
    ToolFormat.HERMES: Hermes(),
    ToolFormat.LLAMA3: Llama3(),
    ToolFormat.MISTRAL: Mistral(),
    ToolFormat.MISTRAL_ARGS: MistralArgs(),
    ToolFormat.QWEN3_XML: Qwen3Xml(),
    ToolFormat.DEEPSEEK_R1: DeepSeek(v31=False),
    ToolFormat.DEEPSEEK_V31: DeepSeek(v31=True),
    ToolFormat.HARMONY: HarmonyCalls(),
    ToolFormat.COMMAND_R7B: CommandR7B(),
    ToolFormat.GRANITE: Granite(),
    ToolFormat.FUNCTIONARY_V31: FunctionaryV31(),
    ToolFormat.FUNCTIONARY_V32: FunctionaryV32(),
}

# Families whose templates render past calls and results but list no tools: edged lists them
# in the family's own words (as llama-server does for DeepSeek).
PROMPTED = frozenset({ToolFormat.DEEPSEEK_R1, ToolFormat.DEEPSEEK_V31})

_TOOLS_VAR = re.compile(r"\btools\b")


@dataclass(frozen=True)
class Family:
    """A template's family: how its model writes calls and reasoning, and what it lists."""

    name: str
    fmt: ToolFormat | None  # None: no call markup of its own (generic)
    reasoning: ReasoningStyle | None
    lists_tools: bool  # the template renders the `tools` variable itself

    def wire(self) -> dict[str, Any]:
        """What /props and /api/show say about it."""
        style = self.reasoning
        kind = None if style is None else "harmony" if isinstance(style, Harmony) else style.open
        return {
            "family": self.name,
            "tool_format": None if self.fmt is None else self.fmt.value,
            "reasoning": kind,
        }


def _reasoning(template: str) -> ReasoningStyle | None:
    for markers, style in THINKING:
        if all(m in template for m in markers):
            return style
    return None


@lru_cache(maxsize=64)
def family_of(template: str | None) -> Family:
    """The family of a chat template (`generic` when none is recognised)."""
    source = template or ""
    lists = _TOOLS_VAR.search(source) is not None
    reasoning = _reasoning(source)
    for rule in RULES:
        if rule.matches(source):
            return Family(rule.family, rule.fmt, reasoning, lists)
    return Family(GENERIC, None, reasoning, lists)
