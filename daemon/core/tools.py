"""Function calling on chat: tool prompts, call grammars, and parsing calls out of model text."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.core.families import GENERIC, PROMPTED, SYNTAXES, ToolFormat, family_of
from daemon.core.families.deepseek import tools_prompt as deepseek_tools_prompt
from daemon.core.families.grammars import call_trigger, family_grammar, json_call_root
from daemon.core.formats import gbnf, unenforceable_keywords
from daemon.core.request import ChatRequest, FunctionSpec, Message, NamedTool
from daemon.errors import InvalidRequest

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_TAG = "[TOOL_CALLS]"
_EMPTY_PARAMS: dict[str, Any] = {"type": "object", "properties": {}}
_DEFS = ("$defs", "definitions")
# Families whose calls are one JSON object each (name inside): `tool-call` from calls_schema.
_JSON_CALLS = {
    ToolFormat.HERMES: ("name", "arguments"),
    ToolFormat.LLAMA3: ("name", "parameters"),
    ToolFormat.MISTRAL: ("name", "arguments"),
    ToolFormat.GRANITE: ("name", "arguments"),
    ToolFormat.COMMAND_R7B: ("tool_name", "parameters"),
}

__all__ = ["ToolFormat"]  # re-exported: dialects and tests name formats through this module


@dataclass(frozen=True)
class Function:
    """A callable function as the request declared it."""

    name: str
    description: str | None
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """The OpenAI tool object, as templates and the generic prompt list it."""
        # OpenAI's key order (name, description, parameters): templates print it with tojson.
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for the prompt, the sampler and the parser."""

    functions: tuple[Function, ...]
    allowed: frozenset[str]  # names a parsed call may have
    fmt: ToolFormat
    native: bool  # the model's own template lays the tools out
    grammar: str | None  # set when a call is required or named
    legacy: bool = False  # asked with `functions`: answered as `function_call`
    family: str = GENERIC  # the template's family (docs/families.md)

    def schemas(self) -> dict[str, dict[str, Any]]:
        """Each function's parameters schema by name (the XML formats type values by it)."""
        return {f.name: f.parameters for f in self.functions}


def template_supports_tools(source: str) -> bool:
    """Whether a chat template renders a `tools` variable itself."""
    return re.search(r"\btools\b", source) is not None


def template_format(source: str) -> ToolFormat:
    """The call syntax a tool-aware template teaches its model (its family's; else Hermes)."""
    return family_of(source).fmt or ToolFormat.HERMES


def _format(source: str) -> tuple[ToolFormat, bool]:
    """The call syntax for a template, and whether the template lists the tools itself.

    A template that lists tools speaks its family's syntax (Hermes blocks if unknown); one that
    only renders past calls (DeepSeek) gets the tools listed in its family's words; any other
    gets edged's generic prompt, whose syntax is Hermes'.
    """
    family = family_of(source)
    if family.lists_tools:
        return family.fmt or ToolFormat.HERMES, True
    if family.fmt in PROMPTED:
        return family.fmt, False
    return ToolFormat.HERMES, False


def _functions(tools: Sequence[FunctionSpec]) -> tuple[Function, ...]:
    out = []
    for t in tools:
        params = t.parameters or _EMPTY_PARAMS
        _check_parameters(t.name, params)
        out.append(Function(t.name, t.description, params))
    return tuple(out)


def _check_parameters(name: str, params: dict[str, Any]) -> None:
    """A parameters schema must describe an object and convert to a grammar, up front."""
    kind = params.get("type", "object")
    if kind != "object":
        raise InvalidRequest(
            f"the parameters of `{name}` must be an object schema, not type {kind!r}",
            param="tools",
        )
    for d in _DEFS:
        if d in params and not isinstance(params[d], dict):
            raise InvalidRequest(
                f"`{d}` in the parameters of `{name}` must be an object", param="tools"
            )
    try:
        gbnf(params)
    except Exception as exc:  # the converter raises many kinds on schemas it cannot handle
        raise InvalidRequest(
            f"the parameters schema of `{name}` is unusable: {exc}", param="tools"
        ) from exc


def check_request(req: ChatRequest) -> None:
    """Everything about `tools`/`tool_choice` that needs no model, run before anything loads:
    each schema converts, the choice names a tool, a forced call's schemas are enforceable.
    The call grammar itself is built once, in the model's family's markup (`plan_tools`)."""
    functions = _functions(req.tools)
    for f in _forced(req, functions):
        _check_enforceable(f)


def _forced(req: ChatRequest, functions: tuple[Function, ...]) -> list[Function]:
    """The functions a required or named `tool_choice` forces a call of (checked against
    `tools`); [] where the model chooses."""
    choice = req.tool_choice
    if isinstance(choice, NamedTool):
        if choice.name not in {f.name for f in functions}:
            raise InvalidRequest(
                f"tool_choice names `{choice.name}`, which is not among the tools",
                param="tool_choice",
            )
    elif choice == "required" and not functions:
        raise InvalidRequest("tool_choice `required` needs tools", param="tool_choice")
    elif choice != "required":
        return []
    if req.grammar is not None or req.format is not None:
        raise InvalidRequest(
            "a required or named tool_choice cannot be combined with grammar or response_format",
            param="tool_choice",
        )
    if isinstance(choice, NamedTool):
        return [f for f in functions if f.name == choice.name]
    return list(functions)


def plan_tools(req: ChatRequest, template_source: str) -> ToolPlan | None:
    """Validate `tools`/`tool_choice`; None when the model is to see no tools."""
    choice = req.tool_choice
    functions = _functions(req.tools)
    forced = _forced(req, functions)
    if not functions or choice == "none":
        return None
    fmt, native = _format(template_source)
    if isinstance(choice, NamedTool):
        allowed = frozenset({choice.name})
    else:
        allowed = frozenset(f.name for f in functions)
    grammar = None
    if forced:
        # A named function is called once: a grammar that allowed more would let the model
        # repeat the call until max_tokens cuts one in half.
        parallel = req.parallel_calls and not isinstance(choice, NamedTool)
        grammar = call_grammar(forced, fmt, parallel=parallel)
    family = family_of(template_source).name
    return ToolPlan(functions, allowed, fmt, native, grammar, req.legacy_calls, family)


def lazy_grammar(
    plan: ToolPlan, parallel: bool, token_of: Callable[[str], int | None]
) -> tuple[str, int] | None:
    """For a call the model may choose to make: the family's call grammar and the one token
    that starts it (`token_of` finds the marker's token in the model's vocabulary), so a call,
    once the model opens one, is well formed; text before it is free.

    None where the family opens calls with no marker, the vocabulary writes the marker as
    plain text (prose could then start the grammar), or a schema cannot be enforced: such
    calls are parsed as written, unconstrained.
    """
    marker = call_trigger(plan.fmt)
    token = token_of(marker) if marker is not None else None
    if token is None or SYNTAXES[plan.fmt].initial is not None:
        return None
    try:
        return call_grammar(list(plan.functions), plan.fmt, parallel=parallel), token
    except InvalidRequest:
        return None


def _prefix_refs(node: Any, prefix: str, base: str) -> Any:
    """Rewrite references for the schema's new place: `#/$defs/X` to the hoisted name
    `#/$defs/<prefix>X`, any other local pointer (`#`, `#/properties/...`) to start at `base`,
    where the parameters schema now sits."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = _moved_ref(v, prefix, base)
            elif k in _DEFS:
                continue
            else:
                out[k] = _prefix_refs(v, prefix, base)
        return out
    if isinstance(node, list):
        return [_prefix_refs(v, prefix, base) for v in node]
    return node


def _points_into_itself(node: Any) -> bool:
    """Whether a schema has a local `$ref` that is not into its `$defs`/`definitions`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if (
            isinstance(ref, str)
            and ref.startswith("#")
            and not ref.startswith(("#/$defs/", "#/definitions/"))
        ):
            return True
        return any(_points_into_itself(v) for v in node.values())
    if isinstance(node, list):
        return any(_points_into_itself(v) for v in node)
    return False


def _moved_ref(ref: str, prefix: str, base: str) -> str:
    for d in _DEFS:
        if ref.startswith(f"#/{d}/"):
            return f"#/$defs/{prefix}{ref[len(d) + 3 :]}"
    if ref == "#":
        return base
    if ref.startswith("#/"):
        return base + ref[1:]
    return ref


def calls_schema(
    functions: Iterable[Function], key: str = "arguments", name_key: str = "name"
) -> dict[str, Any]:
    """One JSON schema accepting `{name_key: NAME, key: ARGS}` for any of the functions.

    Each function's `$defs` move to the top level under a per-function prefix, since references
    resolve against the document root.
    """
    alternatives = []
    defs: dict[str, Any] = {}
    for i, f in enumerate(functions):
        prefix = f"f{i}-"
        # A schema that points into itself (`#/properties/...`) moves whole to `$defs/f<i>`
        # (no `-`, so no hoisted name collides), where such pointers can follow it.
        base = f"#/$defs/f{i}"
        for d in _DEFS:
            for name, sub in (f.parameters.get(d) or {}).items():
                defs[f"{prefix}{name}"] = _prefix_refs(sub, prefix, base)
        params = _prefix_refs(f.parameters, prefix, base)
        if _points_into_itself(f.parameters):
            defs[f"f{i}"], params = params, {"$ref": base}
        props: dict[str, Any] = {name_key: {"const": f.name}, key: params}
        if name_key == "tool_name":  # Command R7B numbers its calls first
            props = {"tool_call_id": {"type": "string", "pattern": "^[0-9]{1,3}$"}, **props}
        alternatives.append({"type": "object", "properties": props, "required": list(props)})
    schema: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    if defs:
        schema = {**schema, "$defs": defs}
    return schema


def _check_enforceable(f: Function) -> None:
    """A forced call's parameters must hold no keyword constrained decoding cannot enforce."""
    unsupported = unenforceable_keywords(f.parameters)
    if unsupported:
        raise InvalidRequest(
            f"constrained decoding cannot enforce {', '.join(sorted(unsupported))} "
            f"in the parameters of `{f.name}`; remove them or use tool_choice `auto`",
            param="tools",
        )


def call_grammar(functions: list[Function], fmt: ToolFormat, *, parallel: bool) -> str:
    """GBNF for output that is exactly one (or, if parallel, several) calls in `fmt`."""
    for f in functions:
        _check_enforceable(f)
    try:
        if fmt not in _JSON_CALLS:
            pairs = [(f.name, f.parameters) for f in functions]
            return family_grammar(fmt, pairs, gbnf, parallel=parallel)
        name_key, key = _JSON_CALLS[fmt]
        body = gbnf(calls_schema(functions, key, name_key))
    except Exception as exc:  # the converter raises many kinds on schemas it cannot handle
        raise InvalidRequest(
            f"the tool parameter schemas are unusable: {exc}", param="tools"
        ) from exc
    # The converter names its start rule `root`; ours wraps it in the format's markup.
    body = re.sub(r"^root ::=", "tool-call ::=", body, flags=re.MULTILINE)
    return f"root ::= {json_call_root(fmt, parallel=parallel)}\n{body}"


# ---- the prompt ---------------------------------------------------------------------------

GENERIC_INTRO = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
GENERIC_HOWTO = (
    "</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def generic_system_prompt(functions: Iterable[Function]) -> str:
    """The tool section edged adds to the system prompt of models whose template has none."""
    listing = "".join(json.dumps(f.spec(), ensure_ascii=False) + "\n" for f in functions)
    return GENERIC_INTRO + listing + GENERIC_HOWTO


def call_block(name: str, arguments: Any) -> str:
    """One call written the way the generic prompt asks the model to write it."""
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{payload}\n{CLOSE}"


def _generic_messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool turns rewritten as text, for templates that know nothing of tools.

    Assistant calls become `<tool_call>` blocks; tool results become `<tool_response>` blocks in
    a user turn (consecutive results share one), since such templates may refuse a `tool` role.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in msgs:
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = []
            for c in m["tool_calls"]:
                fn = c["function"]
                if c.get("id"):
                    names[c["id"]] = fn["name"]
                blocks.append(call_block(fn["name"], fn["arguments"]))
            text = "\n".join([m["content"], *blocks] if m["content"] else blocks)
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id") or "", "")
            result = json.dumps({"name": name, "content": m["content"]}, ensure_ascii=False)
            block = f"<tool_response>\n{result}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append({k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")})
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


def prompt_messages(
    messages: Sequence[Message], plan: ToolPlan | None, template_source: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Messages and extra template variables that present the tools and past calls."""
    msgs = [m.for_template() for m in messages]
    if template_supports_tools(template_source):
        if family_of(template_source).fmt is ToolFormat.FUNCTIONARY_V32:
            msgs = [_text_arguments(m) for m in msgs]
        extra = {"tools": [f.spec() for f in plan.functions]} if plan else {}
        return msgs, extra
    fmt = family_of(template_source).fmt
    if fmt in PROMPTED:
        # The template renders past calls and results itself, but lists no tools.
        if plan is not None:
            section = deepseek_tools_prompt(
                [f.spec() for f in plan.functions], fmt is ToolFormat.DEEPSEEK_V31
            )
            msgs = _with_system(msgs, section, template_source)
        return msgs, {}
    msgs = _generic_messages(msgs)
    if plan is not None:
        msgs = _with_system(msgs, generic_system_prompt(plan.functions), template_source)
    return msgs, {}


def _text_arguments(msg: dict[str, Any]) -> dict[str, Any]:
    """A message whose calls carry their arguments as JSON text, as Functionary v3.2's
    template concatenates them (Hugging Face's convention, an object, fails there)."""
    calls = msg.get("tool_calls")
    if not calls:
        return msg
    texted = [
        {**c, "function": {**c["function"], "arguments": _json_text(c["function"]["arguments"])}}
        for c in calls
    ]
    return {**msg, "tool_calls": texted}


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def refuses_system(template_source: str) -> bool:
    """Whether the template raises on a system turn (Gemma 2: "System role not supported")."""
    return "System role not supported" in template_source


def _with_system(
    msgs: list[dict[str, Any]], section: str, template_source: str
) -> list[dict[str, Any]]:
    """The messages with `section` appended to the system prompt (or as one); where the
    template refuses system turns and the caller sent none, it opens the first user turn
    instead (as llama.cpp does for such templates)."""
    if msgs and msgs[0]["role"] == "system" and isinstance(msgs[0].get("content"), str):
        return [{**msgs[0], "content": f"{msgs[0]['content']}\n\n{section}"}, *msgs[1:]]
    if refuses_system(template_source):
        for i, m in enumerate(msgs):
            if m["role"] == "user" and isinstance(m.get("content"), str):
                first = {**m, "content": f"{section}\n\n{m['content']}"}
                return [*msgs[:i], first, *msgs[i + 1 :]]
    return [{"role": "system", "content": section}, *msgs]
