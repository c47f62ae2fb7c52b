"""Where a corpus template cannot render a corpus conversation, and why.

Each entry is a failure of the template itself, the same in transformers' renderer and in
edged's (same exception text; edged answers it as a 400). test_corpus.py checks that every
listed pair raises in both with that message, and that no other pair raises at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateRaises:
    """Templates that raise `message` on these conversations, in both renderers."""

    message: str
    templates: frozenset[str]
    conversations: frozenset[str]
    reason: str

    def covers(self, template: str, conversation: str) -> bool:
        return template in self.templates and conversation in self.conversations


def _set(*names: str) -> frozenset[str]:
    """Names given as strings of space-separated names."""
    return frozenset(n for group in names for n in group.split())


# The conversations that name no tools (tool_use-only templates iterate `tools` unguarded).
_TOOLLESS = _set(
    "assistant_last",
    "documents",
    "multi_turn",
    "multipart",
    "plain",
    "reasoning_effort",
    "reasoning_history",
    "system",
    "thinking_off",
    "thinking_on",
)
_CALL_HISTORY = _set(
    "calls_then_answer openai_call_ids parallel_calls tool_call_empty_content tool_call_history"
)
_WITH_TOOLS = _CALL_HISTORY | _set("date_string", "tools_no_system", "tools_offered")
_ALL = _TOOLLESS | _WITH_TOOLS

KNOWN_RAISES: tuple[TemplateRaises, ...] = (
    TemplateRaises(
        'can only concatenate str (not "list") to str',
        _set(
            "Bielik-11B-v3.0-Instruct ByteDance-Seed-OSS MiMo-VL Qwen-QwQ-32B "
            "Qwen-Qwen2.5-7B-Instruct Qwen3-Coder deepseek-ai-DeepSeek-R1-Distill-Llama-8B "
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B deepseek-ai-DeepSeek-V3.1 "
            "deepseek-ai-DeepSeek-V3.2 ibm-granite-granite-3.3-2B-Instruct "
            "inclusionai-ling-3.0-flash llama-cpp-deepseek-r1 meetkai-functionary-medium-v3.1 "
            "meetkai-functionary-medium-v3.2 microsoft-Phi-3.5-mini-instruct "
            "mistralai-Mistral-Nemo-Instruct-2407 openai-gpt-oss-120b upstage-Solar-Open-100B"
        ),
        _set("multipart"),
        "text-only template: content must be a string (edged's core joins a message's text "
        "parts into one string before rendering, so this never reaches it from a request)",
    ),
    TemplateRaises(
        "'list object' has no attribute 'startswith'",
        _set("Qwen-Qwen3-0.6B"),
        _set("multipart"),
        "text-only template: content must be a string",
    ),
    TemplateRaises(
        "'list object' has no attribute 'replace'",
        _set("NVIDIA-Nemotron-Nano-v2"),
        _set("multipart"),
        "text-only template: content must be a string",
    ),
    TemplateRaises(
        "Invalid user message: user",
        _set("Apertus-8B-Instruct"),
        _set("multipart"),
        "text-only template: content must be a string",
    ),
    TemplateRaises(
        "'NoneType' object is not iterable",
        _set(
            "CohereForAI-c4ai-command-r-plus-tool_use "
            "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use "
            "NousResearch-Hermes-3-Llama-3.1-8B-tool_use"
        ),
        _TOOLLESS,
        "the model's tool_use template (its default one is used without tools) iterates "
        "`tools` unguarded",
    ),
    TemplateRaises(
        "'NoneType' object is not iterable",
        _set("Cohere2MoE", "CohereForAI-c4ai-command-r7b-12-2024-tool_use"),
        _set("documents"),
        "Command R7B renders documents only together with tools",
    ),
    TemplateRaises(
        "'dict object' has no attribute 'description'",
        _set("CohereForAI-c4ai-command-r-plus-tool_use"),
        _WITH_TOOLS,
        "Command R+ reads the tool's top-level `description` (its own tool format, not "
        "OpenAI's `{type, function}` wrapper)",
    ),
    TemplateRaises(
        "'functions' is undefined",
        _set("fireworks-ai-llama-3-firefunction-v2"),
        _ALL,
        "Firefunction v2 needs a `functions` variable (a JSON string) besides the messages",
    ),
    TemplateRaises(
        "'dict object' has no attribute 'content'",
        _set(
            "Qwen-QwQ-32B Qwen-Qwen3-0.6B deepseek-ai-DeepSeek-R1-Distill-Llama-8B "
            "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B ibm-granite-granite-3.3-2B-Instruct "
            "microsoft-Phi-3.5-mini-instruct unsloth-mistral-Devstral-Small-2507"
        ),
        _set("openai_call_ids", "parallel_calls", "tool_call_history"),
        "the template reads an assistant turn's `content` even when it only calls tools; "
        "with `content: ''` (tool_call_empty_content, and what edged's core always sends) "
        "it renders",
    ),
    TemplateRaises(
        "Object of type Undefined is not JSON serializable",
        _set("LFM2-8B-A1B", "LFM2.5-Instruct"),
        _set("openai_call_ids", "parallel_calls", "tool_call_history"),
        "LFM2 writes `message.content | tojson` for a content-less tool-call turn",
    ),
    TemplateRaises(
        "Object of type generator is not JSON serializable",
        _set("llama-cpp-deepseek-r1"),
        _WITH_TOOLS,
        "llama.cpp's own R1 template is written for minja (its `tools | map(...) | tojson` "
        "is a generator in Jinja)",
    ),
    TemplateRaises(
        "System role not supported",
        _set("google-gemma-2-2b-it"),
        _set(
            "multi_turn multipart reasoning_effort system tool_call_empty_content "
            "tool_call_history tools_offered"
        ),
        "Gemma 2 refuses a system turn",
    ),
    TemplateRaises(
        "Conversation roles must alternate user/assistant/user/assistant/...",
        _set("google-gemma-2-2b-it"),
        _set("calls_then_answer", "openai_call_ids", "parallel_calls"),
        "Gemma 2 knows no tool role",
    ),
    TemplateRaises(
        "This model only supports single tool-calls at once!",
        _set(
            "meta-llama-Llama-3.1-8B-Instruct meta-llama-Llama-3.2-3B-Instruct "
            "meta-llama-Llama-3.3-70B-Instruct"
        ),
        _set("parallel_calls"),
        "Llama 3.x templates take one call per assistant turn",
    ),
    TemplateRaises(
        "Tool call IDs should be alphanumeric strings with length 9!",
        _set("Mistral-Small-3.2-24B-Instruct-2506", "mistralai-Mistral-Nemo-Instruct-2407"),
        _set("openai_call_ids"),
        "Mistral's templates take only 9-character call ids, not OpenAI's `call_...`",
    ),
    TemplateRaises(
        "access to attribute 'append' of 'list' object is unsafe.",
        _set("Kimi-K2-Instruct", "Kimi-K2-Thinking"),
        _set(
            "calls_then_answer openai_call_ids parallel_calls tool_call_empty_content "
            "tool_call_history"
        ),
        "Kimi K2 appends to a list while rendering tool results; both sandboxes are immutable",
    ),
    TemplateRaises(
        'can only concatenate str (not "dict") to str',
        _set("meetkai-functionary-medium-v3.2"),
        _CALL_HISTORY,
        "Functionary v3.2 takes call arguments as JSON text, not the dict of Hugging Face's "
        "convention",
    ),
)


def known_raise(template: str, conversation: str) -> TemplateRaises | None:
    """The documented failure of this template on this conversation, if any."""
    return next((k for k in KNOWN_RAISES if k.covers(template, conversation)), None)
