"""Images over HTTP through the official openai SDK: a daemon serving the tiny VLM (--model,
--mmproj) answers a chat with an `image_url` data URL with the greedy tokens of a reference
computed in-process (libmtmd's eval_chunks and a plain decode loop); a returning turn with
the same image reuses its KV; text streams keep going beside an image; bad images are 400s
in OpenAI's error shape, never 5xx."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.request import MEDIA_MARKER
from daemon.engine.native.mtmd import default_marker
from tests.conftest import Server
from tests.media.reference import reference_tokens
from tests.media.tiny_vlm import png_bytes, sample_image

STEPS = 12
QUESTION = "What is in this picture?"


def data_url(blob: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(blob).decode()}"


def image_message(url: str, text: str = QUESTION) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


PNG = png_bytes(sample_image())


@pytest.fixture(scope="module")
def client(vlm_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="none", max_retries=0)


def test_marker_is_libmtmds_default() -> None:
    assert default_marker() == MEDIA_MARKER


def test_greedy_tokens_equal_the_in_process_reference(
    client: openai.OpenAI, vlm_server: Server, vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    resp = client.chat.completions.create(
        model="lm",
        messages=[image_message(data_url(PNG))],
        max_tokens=STEPS,
        temperature=0,
    )
    text = resp.choices[0].message.content or ""
    want = reference_tokens(vlm_lm_path, mmproj["f32"], QUESTION + MEDIA_MARKER, PNG, STEPS)
    assert want, "the reference generated nothing to compare"
    expected = httpx.post(f"{vlm_server.url}/detokenize", json={"tokens": want}, timeout=30).json()[
        "content"
    ]
    assert text == expected
    assert resp.usage is not None and resp.usage.completion_tokens == len(want)
    # The image's positions count as prompt tokens (two chunks of the tiny projector).
    assert resp.usage is not None and resp.usage.prompt_tokens > len(QUESTION.split())


def test_a_returning_turn_reuses_the_image(client: openai.OpenAI) -> None:
    first = [image_message(data_url(PNG), "Describe the colours.")]
    one = client.chat.completions.create(model="lm", messages=first, max_tokens=4, temperature=0)
    assert one.usage is not None
    turn = [
        *first,
        {"role": "assistant", "content": one.choices[0].message.content or ""},
        {"role": "user", "content": "And the shapes?"},
    ]
    two = client.chat.completions.create(model="lm", messages=turn, max_tokens=4, temperature=0)
    assert two.usage is not None and two.usage.prompt_tokens_details is not None
    # Everything of the first prompt but the last tokens (the assistant header, which the
    # template closes differently in a history) came from the slot, the image included.
    cached = two.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= one.usage.prompt_tokens - 8, (cached, one.usage.prompt_tokens)


def test_a_text_stream_completes_beside_an_image(client: openai.OpenAI) -> None:
    texts: list[str] = []

    def stream() -> None:
        chunks = client.chat.completions.create(
            model="lm",
            messages=[{"role": "user", "content": "Count to twenty."}],
            max_tokens=48,
            temperature=0,
            stream=True,
        )
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    t = threading.Thread(target=stream)
    t.start()
    other = png_bytes(sample_image(seed=5))
    resp = client.chat.completions.create(
        model="lm", messages=[image_message(data_url(other))], max_tokens=8, temperature=0
    )
    t.join(120)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert texts and texts[0]


def test_props_and_models_say_vision(vlm_server: Server) -> None:
    props = httpx.get(f"{vlm_server.url}/props", timeout=30).json()
    assert props["modalities"]["vision"] is True
    models = httpx.get(f"{vlm_server.url}/v1/models", timeout=30).json()["data"]
    assert any("multimodal" in m.get("capabilities", []) for m in models)


def _bad(client: openai.OpenAI, url: str) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="lm", messages=[image_message(url)], max_tokens=2, temperature=0
        )
    body = info.value.body
    assert isinstance(body, dict) and body.get("message"), body  # OpenAI's error object
    return info.value


def _huge_png() -> bytes:
    """A PNG whose header declares 100000×100000 pixels (its data is one tiny row)."""
    blob = bytearray(PNG)
    blob[16:24] = (100000).to_bytes(4, "big") * 2
    return bytes(blob)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64,not*base64!", "base64"),
        (data_url(PNG, "image/jpeg"), "declared"),
        (data_url(b"GIF89a" + b"\0" * 20, "image/png"), "declared"),
        (data_url(PNG[: len(PNG) // 2]), "decoded"),
        (data_url(_huge_png()), "pixel"),
        (data_url(b"plain text, not an image", "text/plain"), "PNG, JPEG"),
        ("https://example.com/cat.png", "allow-remote-media"),
        ("file:///etc/passwd", "--media-dir"),
        ("ftp://example.com/cat.png", "data:"),
    ],
)
def test_bad_images_are_400s(client: openai.OpenAI, url: str, says: str) -> None:
    err = _bad(client, url)
    assert says in str(err.body), err.body


def test_too_many_images_is_a_400(client: openai.OpenAI) -> None:
    parts = [{"type": "image_url", "image_url": {"url": data_url(PNG)}}] * 9
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.chat.completions.create(
            model="lm", messages=[{"role": "user", "content": parts}], max_tokens=1
        )


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    blob=st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: PNG[:33] + b),
        st.integers(0, len(PNG)).map(lambda n: PNG[:n]),
    ),
    mime=st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp", "x/y"]),
)
def test_fuzzed_image_parts_never_5xx(vlm_server: Server, blob: bytes, mime: str) -> None:
    r = httpx.post(
        f"{vlm_server.url}/v1/chat/completions",
        json={
            "model": "lm",
            "max_tokens": 1,
            "messages": [image_message(data_url(blob, mime))],
        },
        timeout=120,
    )
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_an_image_to_a_text_model_is_a_400(text_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{text_server.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="does not take images"):
        client.chat.completions.create(
            model="lm", messages=[image_message(data_url(PNG))], max_tokens=1
        )


def test_prompt_logprobs_of_an_image_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.chat.completions.create(
            model="lm",
            messages=[image_message(data_url(PNG))],
            max_tokens=1,
            logprobs=True,
            extra_body={"echo": True},
        )
