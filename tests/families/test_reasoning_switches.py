"""`reasoning_effort` as the variables each family's template reads, and what those templates
then render."""

from __future__ import annotations

from daemon.core.reasoning import template_vars
from daemon.engine.loading.chat_template import ChatTemplate
from tests.families.conftest import template

MSGS = [{"role": "user", "content": "hi"}]


def _render(name: str, effort: str | None) -> str:
    source = template(name)
    return ChatTemplate(source).render(MSGS, **template_vars(None, effort, source))


def test_harmony_gets_one_of_its_three_levels() -> None:
    gpt = template("openai-gpt-oss-120b")
    assert template_vars(None, "none", gpt) == {"reasoning_effort": "low"}
    assert template_vars(None, "max", gpt) == {"reasoning_effort": "high"}
    assert "Reasoning: low" in _render("openai-gpt-oss-120b", "minimal")
    assert "Reasoning: high" in _render("openai-gpt-oss-120b", "high")


def test_thinking_switches_follow_the_effort() -> None:
    qwen = template("Qwen-Qwen3-0.6B")
    assert template_vars(None, "none", qwen)["enable_thinking"] is False
    assert template_vars(None, "high", qwen)["enable_thinking"] is True
    # Qwen3 closes the thinking block in the prompt when thinking is off.
    assert _render("Qwen-Qwen3-0.6B", "none").endswith("<think>\n\n</think>\n\n")
    assert not _render("Qwen-Qwen3-0.6B", "high").endswith("</think>\n\n")
    granite = "ibm-granite-granite-3.3-2B-Instruct"
    assert template_vars(None, "medium", template(granite))["thinking"] is True
    assert "<think></think>" in _render(granite, "medium")
    assert "<think></think>" not in _render(granite, "none")
    # SmolLM3 reads enable_thinking as its /think and /no_think modes.
    assert "/no_think" in _render("HuggingFaceTB-SmolLM3-3B", "none")
    assert "Reasoning Mode: /think" in _render("HuggingFaceTB-SmolLM3-3B", "low")


def test_explicit_kwargs_win_and_no_template_keeps_the_old_mapping() -> None:
    gpt = template("openai-gpt-oss-120b")
    assert template_vars({"reasoning_effort": "medium"}, "none", gpt) == {
        "reasoning_effort": "medium"
    }
    assert template_vars(None, "none") == {"reasoning_effort": "none", "enable_thinking": False}
    # A template that does not think gets the effort only.
    phi = template("microsoft-Phi-3.5-mini-instruct")
    assert template_vars(None, "high", phi) == {"reasoning_effort": "high"}
