"""llama-server's `/completion` with media: `{"prompt_string", "multimodal_data"}` prompts,
whose markers take the files' places in order. The same rendered chat and image give the
OpenAI chat route's greedy answer; every malformed form is a 400, never a 5xx."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.request import MEDIA_MARKER
from tests.conftest import Server
from tests.media.tiny_vlm import png_bytes, sample_image

QUESTION = "What is in this picture?"
STEPS = 8
PNG = png_bytes(sample_image(seed=61))
B64 = base64.b64encode(PNG).decode()


def rendered(srv: Server, content: str) -> str:
    """The model's template applied to one user turn (llama-server's /apply-template)."""
    r = httpx.post(
        f"{srv.url}/apply-template",
        json={"messages": [{"role": "user", "content": content}]},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def complete(srv: Server, prompt: Any, **kw: Any) -> httpx.Response:
    body = {"prompt": prompt, "n_predict": STEPS, "temperature": 0, **kw}
    return httpx.post(f"{srv.url}/completion", json=body, timeout=300)


def chat_answer(srv: Server) -> str:
    url = f"data:image/png;base64,{B64}"
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": STEPS,
        "temperature": 0,
    }
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_a_media_prompt_answers_as_the_chat_route(vlm_server: Server) -> None:
    text = rendered(vlm_server, MEDIA_MARKER + QUESTION)
    assert text.count(MEDIA_MARKER) == 1
    r = complete(vlm_server, {"prompt_string": text, "multimodal_data": [B64]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["content"] == chat_answer(vlm_server)
    assert MEDIA_MARKER in out["prompt"] and QUESTION in out["prompt"]
    assert out["tokens_evaluated"] > len(QUESTION.split())  # the image's positions count

    # Streamed, and as one of several prompts beside a plain one.
    with httpx.stream(
        "POST",
        f"{vlm_server.url}/completion",
        json={
            "prompt": {"prompt_string": text, "multimodal_data": [B64]},
            "n_predict": STEPS,
            "temperature": 0,
            "stream": True,
        },
        timeout=300,
    ) as s:
        events = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith("data:")]
    assert "".join(e["content"] for e in events) == out["content"]
    both = complete(vlm_server, [{"prompt_string": text, "multimodal_data": [B64]}, "Hello"])
    assert both.status_code == 200, both.text
    assert [b["index"] for b in both.json()] == [0, 1]
    assert both.json()[0]["content"] == out["content"]


def test_a_prompt_object_without_media_is_its_text(vlm_server: Server) -> None:
    plain = complete(vlm_server, "Once upon a time")
    obj = complete(vlm_server, {"prompt_string": "Once upon a time"})
    assert plain.status_code == obj.status_code == 200
    assert plain.json()["content"] == obj.json()["content"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompt": {"prompt_string": "no marker", "multimodal_data": [B64]}}, "marker"),
        (
            {"prompt": {"prompt_string": MEDIA_MARKER * 2, "multimodal_data": [B64]}},
            "marker",
        ),
        ({"prompt": {"prompt_string": MEDIA_MARKER, "multimodal_data": ["%%%"]}}, "base64"),
        (
            {"prompt": {"prompt_string": MEDIA_MARKER, "multimodal_data": [B64[:60]]}},
            "decoded",
        ),
        ({"prompt": "x", "multimodal_data": [B64]}, "inside the prompt object"),
        ({"prompt": "x", "image_data": [{"data": B64, "id": 1}]}, "multimodal_data"),
        ({"prompt": {"multimodal_data": [B64]}}, "prompt"),
    ],
)
def test_malformed_media_prompts_are_400s(vlm_server: Server, body: dict, says: str) -> None:
    r = httpx.post(f"{vlm_server.url}/completion", json={"n_predict": 1, **body}, timeout=120)
    assert r.status_code == 400, r.text
    assert says in r.text


@pytest.mark.parametrize("prompts", [1, 3], ids=["one prompt", "three prompts"])
def test_too_many_files_is_a_400(vlm_server: Server, prompts: int) -> None:
    """--max-images (8) bounds the request, several prompts' files together."""
    n = 9 if prompts == 1 else 3
    prompt = {"prompt_string": MEDIA_MARKER * n, "multimodal_data": [B64] * n}
    r = complete(vlm_server, prompt if prompts == 1 else [prompt] * prompts, n_predict=1)
    assert r.status_code == 400 and "at most 8" in r.text


def test_media_to_a_text_model_is_a_400(text_server: Server) -> None:
    r = complete(text_server, {"prompt_string": MEDIA_MARKER, "multimodal_data": [B64]})
    assert r.status_code == 400 and "does not take images" in r.text


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    text=st.text(max_size=40).map(lambda t: t + MEDIA_MARKER),
    data=st.one_of(
        st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
        st.integers(0, len(PNG)).map(lambda n: base64.b64encode(PNG[:n]).decode()),
        st.text(max_size=30),
    ),
)
def test_fuzzed_media_prompts_never_5xx(vlm_server: Server, text: str, data: str) -> None:
    r = complete(vlm_server, {"prompt_string": text, "multimodal_data": [data]}, n_predict=1)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
