"""One image, three dialects: the same image and question through the official openai,
anthropic and ollama SDKs make the same prompt and the same greedy answer; each dialect
words a bad image as its own 400."""

from __future__ import annotations

import base64

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.conftest import Server
from tests.media.tiny_vlm import png_bytes, sample_image

PNG = png_bytes(sample_image(seed=3))
B64 = base64.b64encode(PNG).decode()
QUESTION = "Which colour is the largest?"
MAX = 10


def _openai(url: str) -> tuple[str, int]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    resp = client.chat.completions.create(
        model="lm",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        max_tokens=MAX,
        temperature=0,
    )
    assert resp.usage is not None
    return resp.choices[0].message.content or "", resp.usage.prompt_tokens


def _anthropic(url: str) -> tuple[str, int]:
    client = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
    msg = client.messages.create(
        model="lm",
        max_tokens=MAX,
        extra_body={"temperature": 0},  # the SDK leaves sampling knobs to extra_body
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": B64},
                    },
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    text = "".join(b.text for b in msg.content if b.type == "text")
    # Anthropic counts the prompt as computed plus read from the cache.
    return text, msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)


def _ollama(url: str) -> tuple[str, int]:
    resp = ollama.Client(host=url).chat(
        model="lm",
        messages=[{"role": "user", "content": QUESTION, "images": [B64]}],
        # Ollama's repeat_penalty defaults to 1.1: off, as on the other dialects.
        options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": MAX},
    )
    return resp.message.content or "", resp.prompt_eval_count or 0


def _ollama_generate(url: str, stream: bool = False) -> tuple[str, object]:
    """/api/generate with `images`: the templated prompt, the image before the text."""
    options = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": MAX}
    client = ollama.Client(host=url)
    if stream:
        parts = list(
            client.generate(model="lm", prompt=QUESTION, images=[B64], options=options, stream=True)
        )
        return "".join(p.response for p in parts), parts[-1].context
    resp = client.generate(model="lm", prompt=QUESTION, images=[B64], options=options)
    return resp.response, resp.context


def test_the_same_image_gives_the_same_answer_on_every_dialect(vlm_server: Server) -> None:
    want = _openai(vlm_server.url)
    assert want[0]
    assert _anthropic(vlm_server.url) == want
    # Ollama's prompt_eval_count counts only what it evaluated (the rest came from the slot).
    assert _ollama(vlm_server.url)[0] == want[0]
    # /api/generate too, whole and streamed; its answer carries no `context` (the image's
    # positions are no token ids a client could send back).
    assert _ollama_generate(vlm_server.url) == (want[0], None)
    assert _ollama_generate(vlm_server.url, stream=True) == (want[0], None)


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"raw": True}, "raw"), ({"suffix": "x"}, "suffix"), ({"context": [1, 2]}, "context")],
)
def test_generate_refuses_images_where_no_template_renders_them(
    vlm_server: Server, extra: dict[str, object], param: str
) -> None:
    body = {"model": "lm", "prompt": QUESTION, "images": [B64], "stream": False, **extra}
    r = httpx.post(f"{vlm_server.url}/api/generate", json=body, timeout=120)
    assert r.status_code == 400, r.text
    assert param in r.json()["error"]


def test_anthropic_counts_an_images_tokens(vlm_server: Server) -> None:
    client = anthropic.Anthropic(base_url=vlm_server.url, api_key="none", max_retries=0)
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
        {"type": "text", "text": QUESTION},
    ]
    with_image = client.messages.count_tokens(
        model="lm", messages=[{"role": "user", "content": content}]
    ).input_tokens
    text_only = client.messages.count_tokens(
        model="lm", messages=[{"role": "user", "content": QUESTION}]
    ).input_tokens
    assert with_image > text_only


def test_each_dialect_words_a_bad_image_as_a_400(vlm_server: Server) -> None:
    bad = base64.b64encode(PNG[:40]).decode()  # a PNG cut inside its first chunk
    client = anthropic.Anthropic(base_url=vlm_server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="lm",
            max_tokens=2,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": bad},
                        }
                    ],
                }
            ],
        )
    assert info.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=vlm_server.url).chat(
            model="lm", messages=[{"role": "user", "content": "hi", "images": [bad]}]
        )
    assert err.value.status_code == 400


def test_ollama_show_says_vision(vlm_server: Server) -> None:
    caps = ollama.Client(host=vlm_server.url).show("lm").capabilities or []
    assert "vision" in caps and "completion" in caps


def test_anthropic_tool_results_may_hold_images(vlm_server: Server, text_server: Server) -> None:
    """A tool_result's image blocks are part of the prompt where they stand (a screenshot a
    tool returned); a model that does not see answers a 400, never a 5xx."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}}
    use = {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}
    tool = {"name": "screenshot", "input_schema": {"type": "object", "properties": {}}}

    def messages(result: list[dict[str, object]]) -> list[dict[str, object]]:
        block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": result}
        return [
            {"role": "user", "content": "Take a screenshot."},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [block, {"type": "text", "text": QUESTION}]},
        ]

    client = anthropic.Anthropic(base_url=vlm_server.url, api_key="none", max_retries=0)
    seen = messages([{"type": "text", "text": "Here:"}, image])
    with_image = client.messages.count_tokens(model="lm", messages=seen, tools=[tool])
    text_only = client.messages.count_tokens(
        model="lm", messages=messages([{"type": "text", "text": "Here:"}]), tools=[tool]
    )
    assert with_image.input_tokens > text_only.input_tokens
    answer = client.messages.create(model="lm", max_tokens=4, messages=seen, tools=[tool])
    assert answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0) == (
        with_image.input_tokens
    )
    blind = anthropic.Anthropic(base_url=text_server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        blind.messages.create(model="lm", max_tokens=4, messages=seen, tools=[tool])
