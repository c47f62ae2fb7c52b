"""The reference renderer: Hugging Face transformers' `apply_chat_template`, without a tokenizer.

`apply_chat_template(..., tokenize=False)` normalises the messages (drops keys whose value is
None), merges the tokenizer's special tokens under the caller's kwargs, and calls
`render_jinja_template`; this does the same with the special tokens given explicitly, so no
tokenizer (and no torch) is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from transformers.utils import chat_template_utils as hf

from daemon.engine.loading import chat_template as edged

# The instant `strftime_now` reads in both renderers while a test freezes the clock.
FROZEN = datetime(2025, 3, 14, 9, 30, 0)


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return FROZEN if tz is None else FROZEN.replace(tzinfo=tz)


def hf_render(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    special_tokens: dict[str, str],
    **kwargs: Any,
) -> str:
    """What `tokenizer.apply_chat_template(messages, tokenize=False, ...)` returns."""
    conversation = hf._normalize_chat_messages(messages)
    rendered, _ = hf.render_jinja_template(
        conversations=[conversation],
        tools=tools,
        documents=documents,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **{**special_tokens, **kwargs},
    )
    return rendered[0]


@contextmanager
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[datetime]:
    """`strftime_now` answers FROZEN in transformers' renderer and in edged's."""
    with monkeypatch.context() as m:
        m.setattr(hf, "datetime", _FrozenDatetime)
        m.setattr(edged, "datetime", _FrozenDatetime)
        yield FROZEN
