"""The renderer's environment, one feature at a time, against transformers' renderer.

The corpus (test_corpus.py) shows whole templates agree; these pin down each part of the
environment a template can reach, so a difference is named when it appears.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from jinja2.sandbox import SecurityError

from daemon.core.errors import to_api
from daemon.engine.errors import InvalidInput
from daemon.engine.loading.chat_template import CHATML_TEMPLATE, ChatTemplate
from tests.templates.reference import FROZEN, frozen_clock, hf_render

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
HELLO = [{"role": "user", "content": "hi"}]
VALUE = {"zeta": "Zürich <b>&</b> 'q'", "alpha": [1, 2.5, None, True], "ü": {"nested": "é"}}


def both(source: str, messages: list[dict[str, Any]] = HELLO, **kwargs: Any) -> tuple[str, str]:
    """The same template and variables rendered by edged and by transformers."""
    prompt = kwargs.pop("add_generation_prompt", False)
    ours = ChatTemplate(source, **SPECIAL).render(messages, add_generation_prompt=prompt, **kwargs)
    theirs = hf_render(
        source, messages, add_generation_prompt=prompt, special_tokens=SPECIAL, **kwargs
    )
    return ours, theirs


SNIPPETS: dict[str, tuple[str, dict[str, Any]]] = {
    # tojson: json.dumps with ensure_ascii=False, keys in order, no HTML escaping.
    "tojson": ("{{ value | tojson }}", {"value": VALUE}),
    "tojson_indent": ("{{ value | tojson(indent=2) }}", {"value": VALUE}),
    "tojson_separators": ("{{ value | tojson(separators=(',', ':')) }}", {"value": VALUE}),
    "tojson_sort_keys": ("{{ value | tojson(sort_keys=True) }}", {"value": VALUE}),
    "tojson_ensure_ascii": ("{{ value | tojson(ensure_ascii=True) }}", {"value": VALUE}),
    "loop_break": (
        "{% for i in range(9) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}
    ),
    "loop_continue": (
        "{% for i in range(5) %}{% if i % 2 %}{% continue %}{% endif %}{{ i }}{% endfor %}", {}
    ),
    "generation_tag": (
        "{% for m in messages %}[{% generation %}{{ m.content }}{% endgeneration %}]{% endfor %}",
        {},
    ),
    "trim_and_lstrip": ("  {% if true %}\n  x\n  {% endif %}\ny", {}),
    "tools_none": ("{{ tools is none }} {{ documents is none }} {{ tools is defined }}", {}),
    "tools_given": ("{{ tools | length }} {{ tools[0].function.name }}", {"tools": [
        {"type": "function", "function": {"name": "f", "parameters": {}}}
    ]}),
    "documents_given": ("{% for d in documents %}{{ d.title }}:{{ d.text }};{% endfor %}", {
        "documents": [{"title": "a", "text": "b"}]
    }),
    "special_tokens": ("{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}", {}),
    "kwargs_override_special": ("{{ bos_token }}", {"bos_token": "<BOS>"}),
    "extra_kwargs": ("{{ enable_thinking }} {{ reasoning_effort }}", {
        "enable_thinking": False, "reasoning_effort": "low"
    }),
    "add_generation_prompt": ("{{ add_generation_prompt }}", {"add_generation_prompt": True}),
    "dict_global": ("{{ dict(a=1, b=2) | tojson }} {{ dict.fromkeys(['x'], 0) | tojson }}", {}),
    "namespace": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% endfor %}{{ ns.n }}",
        {},
    ),
    "strftime_now": ("{{ strftime_now('%d %b %Y %H:%M') }}", {}),
    "undefined_prints_empty": ("[{{ nothing }}][{{ messages[0].nothing }}]", {}),
    "defined_tests": ("{{ messages[0].tool_calls is defined }} {{ nothing is defined }}", {}),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _frozen(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.node.get_closest_marker("real_clock"):
        yield
        return
    with frozen_clock(monkeypatch):
        yield


@pytest.mark.parametrize("name", SNIPPETS)
def test_snippet_renders_as_transformers(name: str) -> None:
    source, kwargs = SNIPPETS[name]
    ours, theirs = both(source, **kwargs)
    assert ours == theirs


def test_tojson_is_plain_json_dumps() -> None:
    """Not Jinja's own filter, which sorts keys and escapes `<`, `>`, `&` and `'`."""
    ours, _ = both("{{ value | tojson }}", value=VALUE)
    assert ours == json.dumps(VALUE, ensure_ascii=False)
    assert "Zürich <b>&</b> 'q'" in ours and ours.index("zeta") < ours.index("alpha")


def test_strftime_now_reads_the_clock() -> None:
    ours, _ = both("{{ strftime_now('%Y-%m-%d') }}")
    assert ours == FROZEN.strftime("%Y-%m-%d")


@pytest.mark.real_clock
def test_strftime_now_unfrozen_is_today() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    out = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render(HELLO)
    assert out in {before, datetime.now().strftime("%Y-%m-%d")}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        # None-valued keys are absent: `is defined` is false, nothing prints "None".
        ([{"role": "assistant", "content": None, "reasoning_content": None}], "False|False|"),
        # Earlier thinking reaches templates under every name they read.
        ([{"role": "assistant", "content": "a", "reasoning_content": "r"}], "True|True|r/r"),
        ([{"role": "assistant", "content": "a", "reasoning": "r"}], "True|True|r/r"),
        ([{"role": "assistant", "content": "a", "thinking": "r"}], "True|True|r/r"),
    ],
)
def test_messages_as_transformers_hands_them(messages: list[dict[str, Any]], expected: str) -> None:
    source = (
        "{% set m = messages[0] %}{{ m.content is defined }}|{{ m.reasoning_content is defined }}|"
        "{% if m.thinking is defined %}{{ m.thinking }}/{{ m.reasoning_content }}{% endif %}"
    )
    ours, theirs = both(source, messages)
    assert ours == theirs == expected


def test_messages_are_not_changed() -> None:
    """Dropping None keys and aliasing reasoning work on copies."""
    msgs = [{"role": "assistant", "content": None, "reasoning_content": "r"}]
    ChatTemplate(CHATML_TEMPLATE.replace("message['content']", "'x'")).render(msgs)
    assert msgs == [{"role": "assistant", "content": None, "reasoning_content": "r"}]


def _api_error(source: str, messages: list[dict[str, Any]] = HELLO, **kwargs: Any) -> str:
    """The template's failure as edged answers it: a 400 on `messages`; its message."""
    with pytest.raises(InvalidInput) as info:
        ChatTemplate(source).render(messages, **kwargs)
    api = to_api(info.value)
    assert api.status_code == 400 and api.param == "messages"
    return str(info.value)


def _hf_error(source: str, messages: list[dict[str, Any]] = HELLO) -> Exception:
    with pytest.raises(Exception) as info:
        hf_render(source, messages, add_generation_prompt=True, special_tokens=SPECIAL)
    return info.value


@pytest.mark.parametrize(
    "source",
    [
        "{{ raise_exception('Conversation roles must alternate') }}",
        # Strict undefined values, as in transformers: an attribute of a missing key fails.
        "{{ messages[0].nothing.deeper }}",
        "{{ messages[0].nothing + 'x' }}",
        # Python errors inside the template are the conversation's failure, never a 500.
        "{{ 1 // (messages | length - 1) }}",
        "{{ messages[0].content + 1 }}",
        "{{ tools | length }}",
        # The sandbox: internals, mutation, underscore names on a namespace.
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% set ns = namespace(_x=1) %}",
        "{% set ns = namespace() %}{% set ns._x = 1 %}",
    ],
)
def test_failures_are_the_same_and_a_400(source: str) -> None:
    ours = _api_error(source)
    theirs = _hf_error(source)
    if isinstance(theirs, SecurityError):
        assert ours.startswith("chat template refused: ")
        # Underscore names are refused in edged's words; the sandbox's own in its words.
        assert "'_x'" in ours or ours == f"chat template refused: {theirs}"
    else:
        assert ours == f"chat template failed: {theirs}"


def test_raise_exception_message_reaches_the_client() -> None:
    msg = _api_error("{{ raise_exception('Only user and assistant roles are supported!') }}")
    assert msg == "chat template failed: Only user and assistant roles are supported!"


def test_underscore_namespace_is_refused() -> None:
    msg = _api_error("{% set ns = namespace() %}{% set ns._x = 1 %}")
    assert msg.startswith("chat template refused:")


def test_default_template_is_chatml() -> None:
    t = ChatTemplate(None)
    assert t.source == CHATML_TEMPLATE
    assert t.render(HELLO) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert t.render(HELLO, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"
