"""Images a text model attends to as a whole (Gemma 3's projector): libmtmd turns causal
attention off for the image's tokens, so its rows go into one llama_decode, and llama.cpp
aborts the process when such a decode does not fit one micro-batch. A tiny random Gemma 3
projector (tests/media/tiny_gemma3.py) on the embedded SmolLM2: the scheduler's answer is
libmtmd's own, a returning turn reuses the image, and a daemon whose batches are smaller
than the image answers a 400 and keeps serving, where it used to die."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from daemon.engine.native.llama import Context, ContextOptions, Model
from daemon.engine.native.mtmd import ChunkType, Projector, ProjectorOptions
from tests.conftest import Server, start_server, stop_server
from tests.media.conftest import ARGS
from tests.media.reference import flat, image_turn, reference_chat
from tests.media.test_image_prompt_eval import hand_fed_equals_libmtmd
from tests.media.tiny_gemma3 import TOKENS, write_mmproj
from tests.media.tiny_vlm import png_bytes, sample_image

STEPS = 8
IMAGE = png_bytes(sample_image(size=32, seed=21))
QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def gemma_mmproj(text_hidden: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmproj(tmp_path_factory.mktemp("gemma3_mmproj") / "mmproj.gguf", text_hidden)


@pytest.fixture(scope="module")
def lm_path(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 under the name the daemons serve it by."""
    path = tmp_path_factory.mktemp("gemma3_lm") / "seer.gguf"
    path.symlink_to(smollm_gguf)
    return path


def _serve(tmp: Path, lm: Path, mmproj: Path, *args: str) -> Server:
    return start_server(tmp, "--model", str(lm), "--mmproj", str(mmproj), *ARGS, *args)


@pytest.fixture(scope="module")
def server(
    lm_path: Path, gemma_mmproj: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = _serve(tmp_path_factory.mktemp("gemma3_http"), lm_path, gemma_mmproj)
    yield srv
    stop_server(srv)


def _ask(text: str = QUESTION) -> dict:
    return image_turn(IMAGE, text)


def _client(srv: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)


def _text(srv: Server, tokens: list[int]) -> str:
    r = httpx.post(f"{srv.url}/detokenize", json={"tokens": tokens}, timeout=30)
    return str(r.json()["content"])


def test_the_hand_fed_image_equals_libmtmds_evaluation(
    smollm_gguf: Path, gemma_mmproj: Path
) -> None:
    """The scheduler's path (the image's rows in one embedding batch, causal attention off
    for it) gives libmtmd's logits; the projector says its images are bidirectional."""
    assert hand_fed_equals_libmtmd(smollm_gguf, gemma_mmproj, IMAGE) == (TOKENS, TOKENS, True)


def test_an_image_past_the_micro_batch_is_refused_not_aborted(
    smollm_gguf: Path, gemma_mmproj: Path
) -> None:
    """In process: decoding it would trip llama.cpp's assertion (the process dies); the
    decode refuses it first."""
    model = Model(smollm_gguf)
    opts = ContextOptions(
        n_ctx=256,
        n_batch=TOKENS,
        n_ubatch=TOKENS // 2,
        n_seq_max=1,
        n_threads=1,
        n_threads_batch=1,
    )
    try:
        with Projector(model, gemma_mmproj, ProjectorOptions(n_threads=1)) as p:
            ctx = Context(model, opts)
            try:
                with (
                    p.bitmap_file_bytes(IMAGE) as bitmap,
                    p.tokenize(f"{p.marker} hi", [bitmap], add_special=True) as chunks,
                ):
                    image = next(c for c in chunks if c.type == ChunkType.IMAGE)
                    with pytest.raises(ValueError, match="one micro-batch"):
                        p.decode_embeddings(ctx, image, p.encode(image), 1, 0, TOKENS)
            finally:
                ctx.close()
    finally:
        model.close()


def test_answers_as_libmtmd_and_a_returning_turn_reuses_the_image(
    server: Server, lm_path: Path, gemma_mmproj: Path
) -> None:
    client = _client(server)
    first = [_ask("Describe it.")]
    one = client.chat.completions.create(
        model="seer",
        messages=first,
        max_tokens=STEPS,
        temperature=0,  # type: ignore[arg-type]
    )
    want = reference_chat(lm_path, gemma_mmproj, flat(first), [IMAGE], STEPS)
    assert one.choices[0].message.content == _text(server, want)
    assert one.usage is not None
    turn = [
        *first,
        {"role": "assistant", "content": one.choices[0].message.content or ""},
        {"role": "user", "content": "And the colours?"},
    ]
    two = client.chat.completions.create(
        model="seer",
        messages=turn,
        max_tokens=STEPS,
        temperature=0,  # type: ignore[arg-type]
    )
    assert two.usage is not None and two.usage.prompt_tokens_details is not None
    assert (two.usage.prompt_tokens_details.cached_tokens or 0) >= one.usage.prompt_tokens - 8
    want = reference_chat(lm_path, gemma_mmproj, flat(turn), [IMAGE], STEPS)
    assert two.choices[0].message.content == _text(server, want)


def test_batches_smaller_than_the_image_are_a_400_and_the_daemon_lives(
    lm_path: Path, gemma_mmproj: Path, tmp_path: Path
) -> None:
    srv = _serve(tmp_path, lm_path, gemma_mmproj, "--ubatch-size", str(TOKENS // 2))
    try:
        client = _client(srv)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="seer", messages=[_ask()], max_tokens=4)  # type: ignore[list-item]
        assert err.value.status_code == 400
        assert "--ubatch-size" in err.value.message and str(TOKENS) in err.value.message
        # Ollama's dialect, its own error shape: the same refusal.
        b64 = base64.b64encode(IMAGE).decode()
        r = httpx.post(
            f"{srv.url}/api/chat",
            json={
                "model": "seer",
                "messages": [{"role": "user", "content": QUESTION, "images": [b64]}],
                "stream": False,
            },
            timeout=60,
        )
        assert r.status_code == 400 and "--ubatch-size" in r.json()["error"]
        text = client.chat.completions.create(
            model="seer", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert text.choices[0].finish_reason in ("stop", "length")
        assert srv.proc.poll() is None
    finally:
        stop_server(srv)
