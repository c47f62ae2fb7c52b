"""OpenAI chat bodies as the core's chat request and sampling."""

from __future__ import annotations

from daemon.api.keepalive import keep_alive_arg
from daemon.api.messages import core_functions, core_message
from daemon.api.openai.protocol import (
    ChatCompletionRequest,
    NamedToolChoice,
    ResponseFormat,
    _Common,
)
from daemon.core.chat import Generation
from daemon.core.request import (
    ChatRequest,
    JsonFormat,
    NamedTool,
    ToolChoice,
)
from daemon.core.sampling import OPENAI, Sampling, sampling_of
from daemon.errors import InvalidRequest


def tool_choice(choice: str | NamedToolChoice | None) -> ToolChoice:
    """`tool_choice`: a mode, or the one function to call."""
    if not isinstance(choice, NamedToolChoice):
        return choice  # type: ignore[return-value]
    if choice.type != "function":
        raise InvalidRequest(
            f"tool_choice type `{choice.type}` is not supported; use `function`",
            param="tool_choice",
        )
    return NamedTool(choice.function.name)


def json_format(fmt: ResponseFormat | None, param: str = "response_format") -> JsonFormat | None:
    """`response_format` (and Together's `json` with `schema`); `text` is no format."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest("json_schema needs a json_schema member", param=param)
    return JsonFormat(fmt.schema_or_none())


def chat(req: ChatCompletionRequest) -> ChatRequest:
    """The body as the core's chat request (legacy `functions` already turned into tools)."""
    fmt, param = json_format(req.response_format), "response_format"
    if req.json_schema is not None:
        if fmt is not None:
            raise InvalidRequest(
                "give response_format or json_schema, not both", param="json_schema"
            )
        fmt, param = JsonFormat(req.json_schema), "json_schema"
    chat_req = ChatRequest(
        messages=tuple(core_message(m) for m in req.messages),
        tools=core_functions(req.tools),
        tool_choice=tool_choice(req.tool_choice),
        parallel_calls=req.parallel_tool_calls,
        format=fmt,
        grammar=req.grammar,
        reasoning_effort=req.reasoning_effort,
        template_kwargs=dict(req.chat_template_kwargs or {}),
        legacy_calls=req.legacy_functions,
        format_param=param,
        continue_final=req.continue_final_message,
        generation_prompt=req.add_generation_prompt,
    )
    last = chat_req.messages[-2:]
    if (
        req.continue_final_message is None
        and chat_req.prefill
        and len(last) == 2
        and last[0].role == "assistant"
    ):
        # llama-server's rule for its implicit prefill: which of the two would be continued?
        # (`continue_final_message: true` says: the last.)
        raise InvalidRequest(
            "two assistant messages end the conversation: the final one would be continued "
            "(a prefill); merge them, or say so with continue_final_message",
            param="messages",
        )
    return chat_req


def sampling(req: _Common) -> Sampling:
    """The body's sampling fields, by OpenAI's names."""
    return sampling_of(req, OPENAI)


def generation(req: ChatCompletionRequest) -> Generation:
    """How the body asks to be answered; its prompt is its `messages` (for errors)."""
    count = req.logprob_count
    return Generation(
        model=req.model,
        sampling=sampling(req),
        max_tokens=req.token_limit,
        n=req.n,
        keep_alive=keep_alive_arg(req.model_fields_set, req.keep_alive),
        logprobs=count,
        prompt_logprobs=req.echo and count is not None,
        safety_model=req.safety_model,
        progress=req.stream and req.return_progress,
        names={"prompt": "messages"},
    )
