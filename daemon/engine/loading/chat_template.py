"""Render chat messages with the model's own Jinja template, inside a sandbox.

The environment is the one Hugging Face transformers' `apply_chat_template` renders with (the
template's authors wrote and tested their templates there): trim_blocks and lstrip_blocks,
`{% break %}`/`{% continue %}`, the `{% generation %}` tag, its `tojson`, `raise_exception`,
`strftime_now`, a `dict` and a `namespace` that cannot reach Python internals; and the same
variables: `messages` without None-valued keys, reasoning under every name templates read,
`tools` and `documents` (None when not given), `add_generation_prompt`, the special tokens.
docs/templates.md says what is guaranteed; tests/templates/ checks it on 70 real templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from daemon.engine.errors import InvalidInput
from daemon.engine.native.builtin_templates import render_builtin

# Used when a GGUF carries no template: ChatML, which most small instruct models speak.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The names a message's earlier thinking travels under; templates read one or another
# (`reasoning_content` most, gpt-oss's `thinking`), so every name gets it, as transformers does.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' `tojson`: plain `json.dumps` (Jinja's own sorts keys and escapes HTML)."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without the type object itself in reach."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (a way towards CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Jinja's own signature trick: `namespace(self=...)` stays a plain attribute.
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template may not set {name!r} on a namespace")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks the assistant's text for training
    masks; rendering a prompt only needs the text inside."""

    tags = {"generation"}  # noqa: RUF012 (Jinja's extension API: a class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as transformers hands them to a template: keys whose value is None dropped
    (templates test `is defined`, and would print `None`), earlier thinking under every name."""
    out = []
    for message in messages:
        msg = {k: v for k, v in message.items() if v is not None}
        reasoning = next((msg[k] for k in REASONING_FIELDS if msg.get(k) is not None), None)
        if reasoning is not None:
            msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
        out.append(msg)
    return out


class ChatTemplate:
    """A compiled chat template plus the special tokens it may refer to."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or CHATML_TEMPLATE
        self._template = _environment().from_string(self.source)
        self._special = {"bos_token": bos_token, "eos_token": eos_token}

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render a conversation; a template failure is the client's 400, never a crash."""
        try:
            return self._template.render(
                messages=template_messages(messages),
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **{**self._special, **extra},
            )
        except SecurityError as exc:
            raise InvalidInput(f"chat template refused: {exc}", subject="messages") from exc
        except Exception as exc:
            # The template is the model file's code: whatever it raises on this conversation
            # (its raise_exception, a TypeError on an unexpected shape, a division by zero)
            # is a conversation it cannot render.
            raise InvalidInput(f"chat template failed: {exc}", subject="messages") from exc


@dataclass(frozen=True)
class Builtin:
    """An operator's choice of one of llama.cpp's built-in formats (--chat-template NAME)."""

    name: str


class BuiltinTemplate(ChatTemplate):
    """One of llama.cpp's built-in formats, written by llama.cpp itself: role and text per
    message, nothing else. Its `source` is the name, which no family's markers match: tools
    and past calls reach it as text, through the generic tool prompt."""

    def __init__(self, name: str) -> None:
        self.source = name
        self._special = {}

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render a conversation; one the format cannot write is the client's 400."""
        pairs = [(str(m.get("role") or ""), _text(m.get("content"))) for m in messages]
        try:
            return render_builtin(self.source, pairs, add_generation_prompt)
        except ValueError as exc:
            raise InvalidInput(str(exc), subject="messages") from exc


def _text(content: Any) -> str:
    """A message's content as one text (parts joined by newlines, as llama.cpp joins them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content]
        return "\n".join(p for p in parts if p)
    return str(content)
