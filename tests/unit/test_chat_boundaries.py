"""What the chat core decides without asking the engine: engine errors in the dialect's words,
images' declared sizes read once, JSON schemas converted by the core itself."""

from __future__ import annotations

import base64
import struct

import pytest

from daemon.core.choices import Policy
from daemon.core.errors import translated
from daemon.core.formats import gbnf, schema_grammar
from daemon.core.media import check_media, image_from_base64
from daemon.core.request import MEDIA_MARKER, ChatRequest, Message
from daemon.engine import errors as engine
from daemon.engine.native.sampler import JSON_OBJECT_GBNF
from daemon.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR that declare a size, with no image data behind them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def _chat_with(data: bytes) -> ChatRequest:
    part = image_from_base64(base64.b64encode(data).decode(), "image/png", "messages")
    return ChatRequest((Message("user", f"look {MEDIA_MARKER}", media=(part,)),))


def test_engine_errors_come_out_in_the_dialects_words() -> None:
    with pytest.raises(ContextLengthExceeded) as info, translated({"prompt": "messages"}):
        raise engine.ContextOverflow("too long", subject="prompt")
    assert info.value.param == "messages" and info.value.message == "too long"
    with pytest.raises(InvalidRequest) as bad, translated({"image": "messages"}):
        raise engine.InvalidInput("not an image", subject="image")
    assert bad.value.param == "messages"
    with pytest.raises(ContextLengthExceeded) as plain, translated():
        raise engine.ContextOverflow("too long", subject="prompt")
    assert plain.value.param == "prompt"


def test_api_errors_pass_through_unchanged() -> None:
    refusal = ModelNotFound("The safety model `x` does not exist", param="safety_model")
    with pytest.raises(ModelNotFound) as info, translated({"prompt": "messages"}):
        raise refusal
    assert info.value is refusal and info.value.param == "safety_model"


def test_declared_size_is_read_when_the_image_is_parsed() -> None:
    req = _chat_with(_png_header(640, 480))
    (part,) = req.media
    assert (part.width, part.height, part.pixels) == (640, 480, 640 * 480)
    check_media(req, Policy(max_image_pixels=640 * 480))  # at the limit: accepted


def test_images_over_the_pixel_limit_are_refused_before_decoding() -> None:
    req = _chat_with(_png_header(100_000, 100_000))
    with pytest.raises(InvalidRequest) as info:
        check_media(req, Policy(), "images")
    assert info.value.param == "images" and "100000×100000" in info.value.message


def test_the_core_converts_schemas_itself() -> None:
    assert gbnf(None) == JSON_OBJECT_GBNF == gbnf({})
    grammar = gbnf({"type": "object", "properties": {"city": {"type": "string"}}})
    assert "root ::=" in grammar and '\\"city\\"' in grammar
    with pytest.raises(InvalidRequest) as info:
        schema_grammar({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}, "format")
    assert info.value.param == "format" and "unusable JSON schema" in info.value.message
