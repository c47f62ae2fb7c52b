"""OpenAI Responses with `input_image` through the official openai SDK: the same image and
question answer as on chat completions; a conversation with an image continues by
`previous_response_id` (rendered again, the image reused from the slot by its digest); bad
images and file ids are 400s in OpenAI's shape; another key cannot continue it."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.conftest import Server
from tests.media.test_dialect_images import B64, MAX, QUESTION, _openai

URL = f"data:image/png;base64,{B64}"


def _ask(client: openai.OpenAI, content: list[dict[str, object]], **kw: object) -> object:
    return client.responses.create(
        model="lm",
        input=[{"role": "user", "content": content}],
        max_output_tokens=MAX,
        temperature=0,
        **kw,
    )


def _image_and_question() -> list[dict[str, object]]:
    return [
        {"type": "input_image", "image_url": URL},
        {"type": "input_text", "text": QUESTION},
    ]


def test_an_image_answers_as_on_chat_completions_and_the_turn_continues(keyed_vlm: Server) -> None:
    alpha = openai.OpenAI(base_url=f"{keyed_vlm.url}/v1", api_key="alpha", max_retries=0)
    want = _openai_keyed(keyed_vlm.url, "alpha")
    first = _ask(alpha, _image_and_question())
    assert first.output_text == want
    assert first.usage.input_tokens > len(QUESTION.split())

    # The next turn renders the conversation again: the image comes back from the slot.
    second = alpha.responses.create(
        model="lm",
        previous_response_id=first.id,
        input="And the smallest?",
        max_output_tokens=4,
        temperature=0,
    )
    assert second.status == "incomplete" and second.incomplete_details.reason == "max_output_tokens"
    # Exact (the daemon runs --exact): the continued turn says what the whole conversation
    # sent at once says.
    whole = alpha.responses.create(
        model="lm",
        input=[
            {"role": "user", "content": _image_and_question()},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And the smallest?"},
        ],
        max_output_tokens=4,
        temperature=0,
        store=False,
    )
    assert second.output_text == whole.output_text
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens - 8, (cached, first.usage.input_tokens)
    items = alpha.responses.input_items.list(first.id).data
    assert [p.type for p in items[0].content] == ["input_image", "input_text"]

    # Streamed too, with the same text.
    events = list(
        alpha.responses.create(
            model="lm",
            input=[{"role": "user", "content": _image_and_question()}],
            max_output_tokens=MAX,
            temperature=0,
            stream=True,
        )
    )
    done = [e for e in events if e.type in ("response.completed", "response.incomplete")]
    assert done and done[0].response.output_text == want

    beta = openai.OpenAI(base_url=f"{keyed_vlm.url}/v1", api_key="beta", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        beta.responses.create(
            model="lm", previous_response_id=first.id, input="Hi", max_output_tokens=2
        )


def _openai_keyed(url: str, key: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    resp = client.chat.completions.create(
        model="lm",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": URL}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        max_tokens=MAX,
        temperature=0,
    )
    return resp.choices[0].message.content or ""


@pytest.mark.parametrize(
    ("part", "says"),
    [
        ({"type": "input_image", "file_id": "file-123"}, "file ids"),
        ({"type": "input_image"}, "image_url"),
        ({"type": "input_image", "image_url": "https://example.com/x.png"}, "not fetched"),
        (
            {
                "type": "input_image",
                "image_url": "data:image/png;base64," + base64.b64encode(b"not a png").decode(),
            },
            "not a PNG",
        ),
    ],
)
def test_bad_input_images_are_400s(vlm_server: Server, part: dict, says: str) -> None:
    client = openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match=says):
        _ask(client, [part, {"type": "input_text", "text": "x"}])


def test_same_answer_as_the_chat_route_without_keys(vlm_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="none", max_retries=0)
    assert _ask(client, _image_and_question()).output_text == _openai(vlm_server.url)[0]
