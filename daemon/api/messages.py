"""OpenAI-style chat messages and function tools: the wire format several dialects share
(OpenAI chat, llama-server's /apply-template, Ollama's `tools`), and their core form."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from daemon.api.fields import ProtocolModel
from daemon.core.media import audio_from_base64, image_from_url
from daemon.core.request import MEDIA_MARKER, CallIn, FunctionSpec, MediaPart, Message
from daemon.errors import InvalidRequest


class TextPart(ProtocolModel):
    """One part of a multi-part message content."""

    type: Literal["text"]
    text: str


class ImageUrl(ProtocolModel):
    """Where an image is: a data URL (base64); `detail` is accepted and has no effect."""

    url: str
    detail: str | None = None


class ImageUrlPart(ProtocolModel):
    """An image part of a message (`image_url`, as a URL object or, as some clients send
    it, the URL itself)."""

    type: Literal["image_url"]
    image_url: ImageUrl | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class InputAudio(ProtocolModel):
    """Audio as base64 text and the format it is in (`wav`, `mp3` or `flac`), checked
    against the bytes."""

    data: str
    format: str


class InputAudioPart(ProtocolModel):
    """An audio part of a message (`input_audio`)."""

    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImageUrlPart | InputAudioPart, Field(discriminator="type")]


class FunctionCall(ProtocolModel):
    """The function an assistant turn called, with its arguments (a JSON text, or an object)."""

    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(ProtocolModel):
    """A tool call of an earlier assistant turn, sent back in the conversation."""

    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(ProtocolModel):
    """A conversation turn."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # An earlier assistant turn's thinking (Qwen3-style templates re-render or drop it).
    reasoning_content: str | None = None

    def text(self) -> str:
        """The content as one string, an image or audio clip as the media marker where it
        goes. Text parts are joined with a newline, none next to media (as llama.cpp joins
        them): the template gets one string whatever its support for content lists."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = ""
        after_image = False
        for p in self.content:
            if isinstance(p, TextPart):
                out += ("\n" if out and not after_image else "") + p.text
                after_image = False
            else:
                out += MEDIA_MARKER
                after_image = True
        return out

    def media(self, param: str = "messages") -> tuple[MediaPart, ...]:
        """The content's images and audio, decoded (400s name `param`)."""
        if not isinstance(self.content, list):
            return ()
        out: list[MediaPart] = []
        for p in self.content:
            if isinstance(p, ImageUrlPart):
                out.append(image_from_url(p.url, param))
            elif isinstance(p, InputAudioPart):
                out.append(audio_from_base64(p.input_audio.data, p.input_audio.format, param))
        return tuple(out)


class FunctionDef(ProtocolModel):
    """A function the model may call: its name, what it does, and a JSON schema of its arguments."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(ProtocolModel):
    """One entry of `tools`; only `function` tools exist (checked when the request is served)."""

    type: str
    function: FunctionDef


def core_message(m: ChatMessage) -> Message:
    """One turn in the core's form; `developer` is the system role by another name."""
    calls = tuple(CallIn(c.function.name, c.function.arguments, c.id) for c in m.tool_calls or ())
    return Message(
        role="system" if m.role == "developer" else m.role,
        content=m.text(),
        name=m.name,
        calls=calls,
        call_id=m.tool_call_id,
        reasoning=m.reasoning_content,
        media=m.media(),
    )


def core_functions(tools: list[Tool] | None) -> tuple[FunctionSpec, ...]:
    """`tools` in the core's form: function tools only."""
    out = []
    for t in tools or ():
        if t.type != "function":
            raise InvalidRequest(
                f"tool type `{t.type}` is not supported; use `function`", param="tools"
            )
        f = t.function
        out.append(FunctionSpec(f.name, f.description, f.parameters))
    return tuple(out)
