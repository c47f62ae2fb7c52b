"""Images meet LoRA adapters. A projector's embeddings do not depend on the adapters (they
come before the language model), but the KV an image leaves in a sequence does: the image's
rows are decoded under the request's adapter set. So an image's KV is reused only under the
same set, a chat and a request_id continuation with an image are exact under their adapters,
and a continuation keeps the adapters it began with.

Each answer is held against libmtmd's eval_chunks and a plain greedy loop with the same
adapters set on the context, computed in-process (tests/media/reference.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.core.request import MEDIA_MARKER
from tests.conftest import Server, stop_server
from tests.e2e.test_errors import assert_error
from tests.media.conftest import start_vlm
from tests.media.reference import flat, image_turn, reference_raw
from tests.media.tiny_vlm import png_bytes, sample_image

STEPS = 8
IMAGE = png_bytes(sample_image(size=40, seed=17))
PROMPT = f"Look: {MEDIA_MARKER}\nWhat follows is"


@pytest.fixture(scope="module")
def lora_vlm(
    vlm_lm_path: Path,
    mmproj: dict[str, Path],
    smollm_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The tiny VLM with SmolLM2's two random adapters (its text model is SmolLM2 with two
    control tokens renamed: the same tensors, so the adapters apply)."""
    srv = start_vlm(
        tmp_path_factory.mktemp("lora_vlm"),
        vlm_lm_path,
        mmproj["f32"],
        "--lora",
        f"a={smollm_adapters['a']}",
        "--lora",
        f"b={smollm_adapters['b']}:0.5",
    )
    yield srv
    stop_server(srv)


def _chat(srv: Server, lora: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [image_turn(IMAGE, "Say what you see.")],
        "max_tokens": STEPS,
        "temperature": 0,
    }
    if lora is not None:
        body["lora"] = lora
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def _text(srv: Server, tokens: list[int]) -> str:
    r = httpx.post(f"{srv.url}/detokenize", json={"tokens": tokens}, timeout=60)
    r.raise_for_status()
    return str(r.json()["content"])


def test_an_image_under_an_adapter_is_exact_and_its_kv_stays_with_its_set(
    lora_vlm: Server, vlm_lm_path: Path, mmproj: dict[str, Path], smollm_adapters: dict[str, Path]
) -> None:
    """No adapter, `a`, no adapter again, `a` again, then `b` at its default 0.5: each
    answer is its own set's reference. Each repeat finds its own set's slot and reuses the
    image's KV there (cached tokens cover it); `a` never reuses the slot holding the image
    under no adapter, nor `b` either slot."""
    messages = flat([image_turn(IMAGE, "Say what you see.")])
    proj = mmproj["f32"]
    want = {
        "none": reference_raw(vlm_lm_path, proj, None, [IMAGE], STEPS, messages)[0],
        "a": reference_raw(
            vlm_lm_path, proj, None, [IMAGE], STEPS, messages, ((smollm_adapters["a"], 1.0),)
        )[0],
        "b": reference_raw(
            vlm_lm_path, proj, None, [IMAGE], STEPS, messages, ((smollm_adapters["b"], 0.5),)
        )[0],
    }
    assert want["a"] != want["none"] and want["b"] != want["none"]  # the adapters matter
    lora = {"none": None, "a": [{"name": "a"}], "b": [{"name": "b"}]}
    cached = []
    for i, name in enumerate(("none", "a", "none", "a", "b")):
        out = _chat(lora_vlm, lora[name])
        assert out["choices"][0]["message"]["content"] == _text(lora_vlm, want[name]), (i, name)
        cached.append(out["usage"]["prompt_tokens_details"]["cached_tokens"])
    p = out["usage"]["prompt_tokens"]
    # All but the prompt's last two tokens came from the slot (the last is decoded again for
    # its logits, and never alone: a lone row would round unlike the chunk that made it).
    assert cached[0] == cached[1] == cached[4] == 0, cached
    assert cached[2] == cached[3] == p - 2, (cached, p)


def _generate(srv: Server, lora: list[dict[str, Any]] | None, **body: Any) -> httpx.Response:
    body = {
        "request_id": "lora-image",
        "stream_response": False,
        "generation_config": {
            "do_sample": False,
            "repetition_penalty": 1.0,
            "max_new_tokens": STEPS // 2,
        },
        **body,
    }
    if lora is not None:
        body["lora"] = lora
    return httpx.post(f"{srv.url}/api/generate", json=body, timeout=300)


def test_a_request_id_with_an_image_continues_under_its_adapter(
    lora_vlm: Server, vlm_lm_path: Path, mmproj: dict[str, Path], smollm_adapters: dict[str, Path]
) -> None:
    """Begun under `a` with an image; other prompts (no adapter) take both slots; the
    continuation under `a` restores the kept state and gives the reference's next tokens.
    A continuation naming other adapters is a 400 that keeps the entry."""
    want, _ = reference_raw(
        vlm_lm_path,
        mmproj["f32"],
        PROMPT,
        [IMAGE],
        STEPS,
        adapters=((smollm_adapters["a"], 1.0),),
    )
    assert len(want) == STEPS, "the reference ended early: nothing to continue"
    httpx.delete(f"{lora_vlm.url}/api/generate/lora-image")
    b64 = base64.b64encode(IMAGE).decode()
    first = _generate(lora_vlm, [{"name": "a"}], prompt=PROMPT, images=[b64])
    assert first.status_code == 200, first.text
    for i in range(2):  # both slots to other work, without adapters
        other = _generate(
            lora_vlm, None, request_id=f"other-{i}", prompt=f"{i} The weather in spring is"
        )
        assert other.status_code == 200, other.text
    assert_error(_generate(lora_vlm, None), 400, "lora")
    assert_error(_generate(lora_vlm, [{"name": "b"}]), 400, "lora")
    second = _generate(lora_vlm, [{"name": "a"}])
    assert second.status_code == 200, second.text
    assert first.text == _text(lora_vlm, want[: STEPS // 2])
    assert first.text + second.text == _text(lora_vlm, want)
