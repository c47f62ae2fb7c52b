"""Every corpus template × every fixed conversation: edged renders what transformers renders.

The reference is `apply_chat_template(tokenize=False)` (tests/templates/reference.py). A pair
either renders the same text in both, or raises in both with the same message and is listed,
with its reason, in tests/templates/known.py. `strftime_now` reads one frozen instant in both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.errors import InvalidInput
from daemon.engine.loading.chat_template import ChatTemplate
from tests.templates.conversations import CONVERSATIONS, Conversation
from tests.templates.known import KNOWN_RAISES, known_raise
from tests.templates.reference import frozen_clock, hf_render

CORPUS = Path(__file__).parent / "corpus"
TEMPLATES = sorted(p.stem for p in CORPUS.glob("*.jinja"))
# The special tokens both renderers get (which strings they are changes nothing compared).
SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}
_compiled: dict[str, ChatTemplate] = {}


def source(name: str) -> str:
    return (CORPUS / f"{name}.jinja").read_text(encoding="utf-8")


def edged_template(name: str) -> ChatTemplate:
    if name not in _compiled:
        _compiled[name] = ChatTemplate(source(name), **SPECIAL)
    return _compiled[name]


@pytest.fixture(autouse=True)
def _frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with frozen_clock(monkeypatch):
        yield


def test_corpus_is_the_issue_s_families() -> None:
    """At least the families issue 29 names, each as its authors publish it."""
    assert len(TEMPLATES) >= 70
    for family in (
        "meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct",
        "meta-llama-Llama-3.3-70B-Instruct", "Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B",
        "Qwen3-Coder", "Qwen-QwQ-32B", "mistralai-Mistral-Nemo-Instruct-2407",
        "Mistral-Small-3.2-24B-Instruct-2506", "unsloth-mistral-Devstral-Small-2507",
        "google-gemma-2-2b-it", "openai-gpt-oss-120b", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
        "deepseek-ai-DeepSeek-V3.1", "ibm-granite-granite-3.3-2B-Instruct",
        "ibm-granite-granite-4.0", "microsoft-Phi-3.5-mini-instruct",
        "HuggingFaceTB-SmolLM3-3B", "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "meetkai-functionary-medium-v3.2",
        "moonshotai-Kimi-K2", "GLM-4.6",
    ):  # fmt: skip
        assert family in TEMPLATES
    listed = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert all(f"`{t}.jinja`" in listed for t in TEMPLATES), "README.md lists every file"


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_compiles(name: str) -> None:
    """No corpus template falls back to ChatML (loop controls, `{% generation %}` compile)."""
    assert edged_template(name).source == source(name)


@pytest.mark.parametrize("conv", CONVERSATIONS, ids=lambda c: c.name)
@pytest.mark.parametrize("name", TEMPLATES)
def test_renders_as_transformers(name: str, conv: Conversation) -> None:
    known = known_raise(name, conv.name)
    for prompt in conv.prompts:
        args = dict(add_generation_prompt=prompt, tools=conv.tools, documents=conv.documents)
        try:
            expected = hf_render(
                source(name), conv.messages, special_tokens=SPECIAL, **args, **conv.kwargs
            )
        except Exception as exc:
            assert known is not None, f"transformers raises, undocumented: {exc!r}"
            assert str(exc) == known.message
            with pytest.raises(InvalidInput) as info:
                edged_template(name).render(conv.messages, **args, **conv.kwargs)
            assert info.value.subject == "messages"
            assert str(info.value).endswith(f": {known.message}")
            continue
        assert known is None, f"documented to raise ({known.reason}) but renders"
        got = edged_template(name).render(conv.messages, **args, **conv.kwargs)
        assert got == expected


def test_known_raises_are_all_used() -> None:
    """Every documented failure names corpus templates and conversations that exist."""
    names = {c.name for c in CONVERSATIONS}
    for k in KNOWN_RAISES:
        assert k.templates <= set(TEMPLATES), k.templates - set(TEMPLATES)
        assert k.conversations <= names, k.conversations - names
