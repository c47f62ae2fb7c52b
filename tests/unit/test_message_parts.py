"""How an OpenAI-shaped message's content parts become the one string a template gets."""

from __future__ import annotations

from daemon.api.messages import ChatMessage
from daemon.core.request import MEDIA_MARKER

IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def text(*parts: object) -> str:
    return ChatMessage.model_validate({"role": "user", "content": list(parts)}).text()


def t(s: str) -> dict[str, str]:
    return {"type": "text", "text": s}


def test_text_parts_join_with_a_newline_and_none_beside_an_image() -> None:
    # As llama.cpp's concat_content_parts joins them.
    assert text(t("a"), t("b")) == "a\nb"
    assert text(t("a"), IMG, t("b")) == "a" + MEDIA_MARKER + "b"
    assert text(IMG, t("q")) == MEDIA_MARKER + "q"
    assert text(t("q"), IMG) == "q" + MEDIA_MARKER
    assert text(IMG, IMG, t("q"), t("r")) == MEDIA_MARKER * 2 + "q\nr"
    assert text() == ""
    assert ChatMessage(role="user", content="plain").text() == "plain"
