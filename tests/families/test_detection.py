"""A family is told by the markup its own chat template writes, never by a file name."""

from __future__ import annotations

import pytest

from daemon.core import tools
from daemon.core.families import GENERIC, Harmony, ThinkTags, ToolFormat, family_of
from daemon.core.reasoning import detect
from tests.families.conftest import TEMPLATES, template

# template file -> (family, call format, reasoning open marker or "harmony" or None)
EXPECTED: dict[str, tuple[str, ToolFormat | None, str | None]] = {
    "openai-gpt-oss-120b": ("gpt-oss", ToolFormat.HARMONY, "harmony"),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": (
        "command-r7b",
        ToolFormat.COMMAND_R7B,
        "<|START_THINKING|>",
    ),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("deepseek-r1", ToolFormat.DEEPSEEK_R1, "<think>"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("deepseek-r1", ToolFormat.DEEPSEEK_R1, "<think>"),
    "deepseek-ai-DeepSeek-V3.1": ("deepseek-v3.1", ToolFormat.DEEPSEEK_V31, "<think>"),
    "meetkai-functionary-medium-v3.1": ("functionary-v3.1", ToolFormat.FUNCTIONARY_V31, None),
    "meetkai-functionary-medium-v3.2": ("functionary-v3.2", ToolFormat.FUNCTIONARY_V32, None),
    "Qwen3-Coder": ("qwen3-coder", ToolFormat.QWEN3_XML, None),
    "ibm-granite-granite-3.3-2B-Instruct": ("granite", ToolFormat.GRANITE, "<think>"),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistral", ToolFormat.MISTRAL_ARGS, None),
    "unsloth-mistral-Devstral-Small-2507": ("mistral", ToolFormat.MISTRAL_ARGS, None),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistral-nemo", ToolFormat.MISTRAL, None),
    "Qwen-Qwen2.5-7B-Instruct": ("hermes", ToolFormat.HERMES, None),
    "Qwen-Qwen3-0.6B": ("hermes", ToolFormat.HERMES, "<think>"),
    "Qwen-QwQ-32B": ("hermes", ToolFormat.HERMES, "<think>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("hermes", ToolFormat.HERMES, None),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": ("hermes", ToolFormat.HERMES, None),
    "meta-llama-Llama-3.1-8B-Instruct": ("llama3", ToolFormat.LLAMA3, None),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama3", ToolFormat.LLAMA3, None),
    "meta-llama-Llama-3.3-70B-Instruct": ("llama3", ToolFormat.LLAMA3, None),
    "HuggingFaceTB-SmolLM3-3B": (GENERIC, None, "<think>"),
    "microsoft-Phi-3.5-mini-instruct": (GENERIC, None, None),
    "google-gemma-2-2b-it": (GENERIC, None, None),
}


def test_every_family_is_told_from_a_template_of_the_corpus() -> None:
    assert set(EXPECTED) <= {p.stem for p in TEMPLATES.glob("*.jinja")}
    # ... and every call syntax edged reads is some published template's.
    assert {fmt for _, fmt, _ in EXPECTED.values() if fmt is not None} == set(ToolFormat)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_family_of_each_template(name: str) -> None:
    family, fmt, reasoning = EXPECTED[name]
    got = family_of(template(name))
    assert (got.name, got.fmt) == (family, fmt)
    style = detect(template(name))
    if reasoning is None:
        assert style is None
    elif reasoning == "harmony":
        assert isinstance(style, Harmony)
    else:
        assert isinstance(style, ThinkTags) and style.open == reasoning
    wire = got.wire()
    assert wire["family"] == family and wire["tool_format"] == (fmt.value if fmt else None)


def test_granite_and_command_r_answers_have_their_own_markers() -> None:
    granite = detect(template("ibm-granite-granite-3.3-2B-Instruct"))
    assert isinstance(granite, ThinkTags) and granite.answer_open == "<response>"
    command = detect(template("CohereForAI-c4ai-command-r7b-12-2024-tool_use"))
    assert isinstance(command, ThinkTags) and command.answer_close == "<|END_RESPONSE|>"


def test_the_file_name_plays_no_part() -> None:
    # The same text under any name is the same family; an empty or unknown template is generic.
    assert family_of(template("Qwen3-Coder")) == family_of(template("Qwen3-Coder") + "\n")
    assert family_of("").name == GENERIC and family_of(None).name == GENERIC
    assert family_of("{% for m in messages %}{{ m.content }}{% endfor %}").fmt is None


@pytest.mark.parametrize(
    ("name", "fmt", "native"),
    [
        ("Qwen3-Coder", ToolFormat.QWEN3_XML, True),
        ("openai-gpt-oss-120b", ToolFormat.HARMONY, True),
        ("mistralai-Mistral-Nemo-Instruct-2407", ToolFormat.MISTRAL, True),
        # DeepSeek's templates render past calls but list no tools: edged lists them itself,
        # in DeepSeek's own words, and parses DeepSeek's markers.
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", ToolFormat.DEEPSEEK_R1, False),
        # A template that knows nothing of tools gets the generic prompt and its syntax.
        ("microsoft-Phi-3.5-mini-instruct", ToolFormat.HERMES, False),
        ("HuggingFaceTB-SmolLM3-3B", ToolFormat.HERMES, False),
    ],
)
def test_plan_speaks_the_family_format(name: str, fmt: ToolFormat, native: bool) -> None:
    from tests.families.test_grammars import request

    plan = tools.plan_tools(request(), template(name))
    assert plan is not None and (plan.fmt, plan.native) == (fmt, native)
    assert plan.family == family_of(template(name)).name


def test_deepseek_tools_are_listed_in_its_own_words() -> None:
    from tests.families.test_grammars import request

    source = template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    req = request()
    plan = tools.plan_tools(req, source)
    msgs, extra = tools.prompt_messages(req.messages, plan, source)
    assert extra == {} and msgs[0]["role"] == "system"
    assert "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>" in msgs[0]["content"]
    assert '"get_weather"' in msgs[0]["content"]
