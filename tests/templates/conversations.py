"""The fixed conversations every corpus template renders, in Hugging Face's message convention.

Hugging Face's convention (transformers' chat templating guide): tool call arguments are a
dict, not JSON text; an assistant turn that only calls tools has no `content`; a tool result
names the call it answers (`tool_call_id`) and the function (`name`); earlier thinking is
`reasoning_content`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Current weather in a city. Answers in <b>°C</b> & "words".',
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
TOOLS = [WEATHER, SEARCH]

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
ASK = {"role": "user", "content": "What's the weather in Zürich & Genève?"}


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call of an assistant turn, arguments as a dict (Hugging Face's rule)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# Nine letters and digits: the call ids Mistral's templates require (they refuse OpenAI's).
CALL_ZH = call("zh0000001", "get_weather", {"city": "Zürich", "unit": "celsius"})
CALL_GE = call("ge0000002", "get_weather", {"city": "Genève <CH>"})
RESULT_ZH = {
    "role": "tool",
    "tool_call_id": "zh0000001",
    "name": "get_weather",
    "content": '{"temperature": 21, "sky": "clear"}',
}
RESULT_GE = {
    "role": "tool",
    "tool_call_id": "ge0000002",
    "name": "get_weather",
    "content": "19 °C, light rain",
}

DOCUMENTS = [
    {"title": "Lakes", "text": "Lake Zürich is 40 km long."},
    {"title": "Cities", "text": "Genève lies at the end of Lake Geneva."},
]


@dataclass(frozen=True)
class Conversation:
    """One conversation and what else the template is given with it."""

    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Whether this conversation is rendered with the generation prompt on, off, or both.
    prompts: tuple[bool, ...] = (True, False)


CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation("plain", [{"role": "user", "content": "Hello! Who are you?"}]),
    Conversation("system", [SYSTEM, {"role": "user", "content": "Name a prime number."}]),
    Conversation(
        "multi_turn",
        [
            SYSTEM,
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "And an even one?"},
        ],
    ),
    Conversation(
        "assistant_last",
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        prompts=(False,),
    ),
    Conversation(
        "multipart",
        [
            SYSTEM,
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe Zürich"},
                    {"type": "text", "text": "in three words."},
                ],
            },
        ],
    ),
    Conversation("tools_offered", [SYSTEM, ASK], tools=TOOLS),
    Conversation("tools_no_system", [ASK], tools=TOOLS),
    Conversation(
        "tool_call_history",
        [SYSTEM, ASK, {"role": "assistant", "tool_calls": [CALL_ZH]}, RESULT_ZH],
        tools=TOOLS,
        prompts=(True,),
    ),
    # The same turn with empty text, as OpenAI-shaped clients and edged's core send it: some
    # templates (Qwen3, DeepSeek R1, Granite 3.3, Phi-3.5, Devstral) read `content` always.
    Conversation(
        "tool_call_empty_content",
        [SYSTEM, ASK, {"role": "assistant", "content": "", "tool_calls": [CALL_ZH]}, RESULT_ZH],
        tools=TOOLS,
        prompts=(True,),
    ),
    Conversation(
        "parallel_calls",
        [ASK, {"role": "assistant", "tool_calls": [CALL_ZH, CALL_GE]}, RESULT_ZH, RESULT_GE],
        tools=TOOLS,
        prompts=(True,),
    ),
    Conversation(
        "openai_call_ids",
        [
            ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    call("call_7f3ab9d2e1c04", "search", {"query": "météo", "limit": 3})
                ],
            },
            {"role": "tool", "tool_call_id": "call_7f3ab9d2e1c04", "content": "no results"},
        ],
        tools=TOOLS,
        prompts=(True,),
    ),
    Conversation(
        "calls_then_answer",
        [
            ASK,
            {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL_ZH]},
            RESULT_ZH,
            {"role": "assistant", "content": "Zürich: 21 °C, clear."},
            {"role": "user", "content": "Thanks!"},
        ],
        tools=TOOLS,
    ),
    Conversation(
        "reasoning_history",
        [
            {"role": "user", "content": "Is 91 prime?"},
            {
                "role": "assistant",
                "reasoning_content": "91 = 7 × 13, so it is not prime.",
                "content": "No: 91 = 7 × 13.",
            },
            {"role": "user", "content": "And 97?"},
        ],
    ),
    Conversation(
        "thinking_off",
        [{"role": "user", "content": "Is 97 prime?"}],
        kwargs={"enable_thinking": False},
    ),
    Conversation(
        "thinking_on",
        [{"role": "user", "content": "Is 97 prime?"}],
        kwargs={"enable_thinking": True},
        prompts=(True,),
    ),
    Conversation(
        "reasoning_effort",
        [SYSTEM, {"role": "user", "content": "Is 97 prime?"}],
        kwargs={"reasoning_effort": "high"},
        prompts=(True,),
    ),
    Conversation(
        "date_string",
        [{"role": "user", "content": "What day is it?"}],
        tools=[WEATHER],
        kwargs={"date_string": "07 Dec 2026"},
        prompts=(True,),
    ),
    Conversation(
        "documents",
        [{"role": "user", "content": "How long is Lake Zürich?"}],
        documents=DOCUMENTS,
        prompts=(True,),
    ),
)
