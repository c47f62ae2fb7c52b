"""Call grammars in each family's own markup, built from per-function argument grammars.

llama.cpp's schema converter names its rules freely (`root`, `space`, `string`, ...), so each
function's grammar is renamed under its own prefix before the grammars are joined.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from daemon.core.families.base import ToolFormat
from daemon.core.families.deepseek import CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END, SEP

_RULE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*::=", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z0-9_-]+")

# Parameter text in Qwen3-Coder's XML: anything that does not close a tag.
NL = "\n"
_SHAPED = {"enum", "const", "pattern", "format", "$ref", "anyOf", "oneOf", "allOf"}
XML_TEXT = 'xml-text ::= ([^<] | "<" [^/])*'


def lit(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def prefixed(grammar: str, prefix: str) -> str:
    """`grammar` with every rule it defines renamed `prefix + name` (its references too)."""
    names = set(_RULE.findall(grammar))
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':  # a literal or a character class: copied as is
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and grammar[j] != close:
                j += 2 if grammar[j] == "\\" else 1
            out.append(grammar[i : j + 1])
            i = j + 1
        elif c == "#":  # a comment, to the end of the line
            j = grammar.find("\n", i)
            j = n if j < 0 else j
            out.append(grammar[i:j])
            i = j
        elif (m := _WORD.match(grammar, i)) is not None:
            word = m.group(0)
            out.append(prefix + word if word in names else word)
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


Convert = Callable[[dict[str, Any]], str]


def _xml_params(params: dict[str, Any], prefix: str, convert: Convert) -> tuple[str, list[str]]:
    """Qwen3-Coder's `<parameter=P>\\nv\\n</parameter>\\n` sequence for one function's schema."""
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or ())
    defs = {k: params[k] for k in ("$defs", "definitions") if k in params}
    parts, rules = [], []
    for j, (key, schema) in enumerate(props.items()):
        schema = schema if isinstance(schema, dict) else {}
        kind = schema.get("type")
        choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
        if kind in ("string", None) and choices and all(isinstance(c, str) for c in choices):
            value = "(" + " | ".join(lit(c) for c in choices) + ")"  # written bare
        elif kind in ("string", None) and not _SHAPED & schema.keys():
            value = "xml-text"
        else:  # typed values (and shaped strings, JSON-quoted) follow the schema as JSON
            value = f"{prefix}p{j}-root"
            rules.append(prefixed(convert({**schema, **defs}), f"{prefix}p{j}-"))
        item = f"{lit(f'<parameter={key}>' + NL)} {value} {lit(NL + '</parameter>' + NL)}"
        parts.append(item if key in required else f"({item})?")
    return " ".join(parts) or '""', rules


def family_grammar(
    fmt: ToolFormat,
    functions: Sequence[tuple[str, dict[str, Any]]],
    convert: Convert,
    *,
    parallel: bool,
) -> str:
    """GBNF for exactly one (or, if parallel, several) calls in `fmt`, whose name sits outside
    the arguments' JSON: Mistral's [ARGS], DeepSeek, harmony, Functionary, Qwen3-Coder."""
    alts: list[str] = []
    rules: list[str] = []
    for i, (name, params) in enumerate(functions):
        prefix = f"f{i}-"
        if fmt is ToolFormat.QWEN3_XML:
            body, more = _xml_params(params, prefix, convert)
            rules += more
            head = lit(f"<tool_call>\n<function={name}>\n")
            alts.append(f"{head} {body} {lit(chr(10).join(['</function>', '</tool_call>']))}")
            continue
        rules.append(prefixed(convert(params), prefix))
        args = f"{prefix}root"
        if fmt is ToolFormat.MISTRAL_ARGS:
            alts.append(f"{lit('[TOOL_CALLS]' + name + '[ARGS]')} {args}")
        elif fmt is ToolFormat.DEEPSEEK_R1:
            head = f"{CALL_BEGIN}function{SEP}{name}\n```json\n"
            alts.append(f"{lit(head)} {args} {lit(chr(10) + '```' + CALL_END)}")
        elif fmt is ToolFormat.DEEPSEEK_V31:
            alts.append(f"{lit(CALL_BEGIN + name + SEP)} {args} {lit(CALL_END)}")
        elif fmt is ToolFormat.HARMONY:
            head = f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            alts.append(f"{lit(head)} {args}")
        elif fmt is ToolFormat.FUNCTIONARY_V31:
            alts.append(f"{lit(f'<function={name}>')} {args} {lit('</function>')}")
        elif fmt is ToolFormat.FUNCTIONARY_V32:
            alts.append(f"{lit(name + chr(10))} {args}")
        else:
            raise ValueError(f"{fmt.value} calls carry their name in the JSON")
    call = "call ::= " + " | ".join(f"({a})" for a in alts)
    sep = {
        ToolFormat.QWEN3_XML: lit("\n"),
        ToolFormat.FUNCTIONARY_V32: lit(">>>"),
    }.get(fmt, "")
    # A harmony call ends the turn (`<|call|>` is end-of-generation): one per turn.
    many = parallel and fmt is not ToolFormat.HARMONY
    root = f"call ({sep + ' ' if sep else ''}call)*" if many else "call"
    if fmt is ToolFormat.DEEPSEEK_R1 or fmt is ToolFormat.DEEPSEEK_V31:
        root = f"{lit(CALLS_BEGIN)} {root} {lit(CALLS_END)}"
    extra = [XML_TEXT] if fmt is ToolFormat.QWEN3_XML else []
    return "\n".join([f"root ::= {root}", call, *extra, *rules]) + "\n"


def json_call_root(fmt: ToolFormat, *, parallel: bool) -> str:
    """The root rule around `tool-call` (one call as a JSON object) for JSON-call families."""
    if fmt is ToolFormat.HERMES:
        block = r'"<tool_call>\n" tool-call "\n</tool_call>"'
        return f'{block} ("\\n" {block})*' if parallel else block
    if fmt is ToolFormat.MISTRAL:
        body = '"[" tool-call ("," " "? tool-call)* "]"' if parallel else '"[" tool-call "]"'
        return f'"[TOOL_CALLS]" {body}'
    if fmt is ToolFormat.GRANITE:
        body = '"[" tool-call ("," " "? tool-call)* "]"' if parallel else '"[" tool-call "]"'
        return f'"<|tool_call|>" {body}'
    if fmt is ToolFormat.COMMAND_R7B:
        sep = '"," "\\n"? " "*'
        body = (
            f'"[" "\\n"? " "* tool-call ({sep} tool-call)* "\\n"? "]"'
            if parallel
            else ('"[" "\\n"? " "* tool-call "\\n"? "]"')
        )
        return f'"<|START_ACTION|>" {body} "<|END_ACTION|>"'
    return "tool-call"  # Llama 3: one bare object


# The marker each family's call grammar begins with, where that marker is how the family opens
# its calls anywhere in an answer (a lazy grammar waits for it). Llama 3's bare object, harmony's
# channel header and Functionary's text openers have none: no single token starts their calls.
_TRIGGERS = {
    ToolFormat.HERMES: "<tool_call>",
    ToolFormat.QWEN3_XML: "<tool_call>",
    ToolFormat.MISTRAL: "[TOOL_CALLS]",
    ToolFormat.MISTRAL_ARGS: "[TOOL_CALLS]",
    ToolFormat.GRANITE: "<|tool_call|>",
    ToolFormat.COMMAND_R7B: "<|START_ACTION|>",
    ToolFormat.DEEPSEEK_R1: CALLS_BEGIN,
    ToolFormat.DEEPSEEK_V31: CALLS_BEGIN,
}


def call_trigger(fmt: ToolFormat) -> str | None:
    """The marker that opens `fmt`'s calls and starts its call grammar, if it has one."""
    return _TRIGGERS.get(fmt)
