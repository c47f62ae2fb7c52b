"""Audio over HTTP: a daemon serving SmolLM2 with the tiny Ultravox projector (--mmproj,
--max-audio-seconds 5) answers an OpenAI chat with an `input_audio` part (official SDK)
with the greedy tokens of an in-process libmtmd reference, and llama-server's /completion
with the same clip in `multimodal_data` answers as the chat; a returning turn reuses the
clip's KV; /props, /v1/models and Ollama's /api/show say the model hears; bad audio is a 400
in each dialect's shape, never a 5xx, and a model that does not hear refuses audio."""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.core.request import MEDIA_MARKER
from tests.conftest import Server
from tests.media.reference import reference_tokens
from tests.media.tiny_audio import (
    TOKENS_PER_WINDOW,
    adpcm_wav,
    flac_bytes,
    mp3_silence,
    tone,
    wav_bytes,
)
from tests.media.tiny_vlm import png_bytes, sample_image

KEY = "hear1"  # this module's API key on audio_server (others use their own)
STEPS = 10
QUESTION = "What do you hear?"
WAV = wav_bytes(tone(440.0, 0.4))
MAX_SECONDS = 5


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def audio_message(blob: bytes, fmt: str = "wav", text: str = QUESTION) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "input_audio", "input_audio": {"data": b64(blob), "format": fmt}},
            {"type": "text", "text": text},
        ],
    }


@pytest.fixture(scope="module")
def hearing(audio_server: Server) -> Server:
    """The audio daemon, its audio limit lowered to MAX_SECONDS on the command line."""
    return audio_server


@pytest.fixture(scope="module")
def client(hearing: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hearing.url}/v1", api_key=KEY, max_retries=0)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_input_audio_chat_answers_as_the_in_process_reference(
    client: openai.OpenAI, hearing: Server, vlm_lm_path: Path, audio_mmproj: Path
) -> None:
    resp = client.chat.completions.create(
        model="lm", messages=[audio_message(WAV)], max_tokens=STEPS, temperature=0
    )
    want = reference_tokens(vlm_lm_path, audio_mmproj, MEDIA_MARKER + QUESTION, WAV, STEPS)
    assert want, "the reference generated nothing to compare"
    r = httpx.post(f"{hearing.url}/detokenize", json={"tokens": want}, headers=auth(), timeout=30)
    assert resp.choices[0].message.content == r.json()["content"]
    # The clip's positions (one 30 s window of the tiny projector) count as prompt tokens.
    assert resp.usage is not None and resp.usage.completion_tokens == len(want)
    assert resp.usage.prompt_tokens > TOKENS_PER_WINDOW


def test_completion_multimodal_data_answers_as_the_chat(hearing: Server) -> None:
    r = httpx.post(
        f"{hearing.url}/apply-template",
        json={"messages": [{"role": "user", "content": MEDIA_MARKER + QUESTION}]},
        headers=auth(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    prompt = {"prompt_string": r.json()["prompt"], "multimodal_data": [b64(WAV)]}
    body = {"prompt": prompt, "n_predict": STEPS, "temperature": 0}
    done = httpx.post(f"{hearing.url}/completion", json=body, headers=auth(), timeout=300)
    assert done.status_code == 200, done.text
    assert done.json()["tokens_evaluated"] > TOKENS_PER_WINDOW
    chat = httpx.post(
        f"{hearing.url}/v1/chat/completions",
        json={"messages": [audio_message(WAV)], "max_tokens": STEPS, "temperature": 0},
        headers=auth(),
        timeout=300,
    )
    assert chat.status_code == 200, chat.text
    assert done.json()["content"] == chat.json()["choices"][0]["message"]["content"]


def test_a_returning_turn_reuses_the_clip(client: openai.OpenAI) -> None:
    clip = wav_bytes(tone(523.0, 0.5))
    first = [audio_message(clip, text="Which note is it?")]
    one = client.chat.completions.create(model="lm", messages=first, max_tokens=4, temperature=0)
    assert one.usage is not None
    turn = [
        *first,
        {"role": "assistant", "content": one.choices[0].message.content or ""},
        {"role": "user", "content": "And how loud?"},
    ]
    two = client.chat.completions.create(model="lm", messages=turn, max_tokens=4, temperature=0)
    assert two.usage is not None and two.usage.prompt_tokens_details is not None
    # Everything of the first prompt but its last tokens (the assistant header, which the
    # template closes differently in a history) came from the slot, the clip included.
    cached = two.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= one.usage.prompt_tokens - 8, (cached, one.usage.prompt_tokens)
    assert cached > TOKENS_PER_WINDOW


def test_props_models_and_show_say_the_model_hears(hearing: Server, vlm_server: Server) -> None:
    for srv, hears, sees in ((hearing, True, False), (vlm_server, False, True)):
        headers = auth() if srv is hearing else {}
        props = httpx.get(f"{srv.url}/props", headers=headers, timeout=30).json()
        assert props["modalities"] == {"vision": sees, "video": False, "audio": hears}
        assert props["media_marker"] == MEDIA_MARKER  # llama-server's key for it
        models = httpx.get(f"{srv.url}/v1/models", headers=headers, timeout=30).json()["data"]
        assert models[0]["modalities"] == {"vision": sees, "audio": hears}
        show = httpx.post(
            f"{srv.url}/api/show", json={"model": models[0]["id"]}, headers=headers, timeout=30
        ).json()
        assert ("audio" in show["capabilities"]) is hears
        assert ("vision" in show["capabilities"]) is sees


def _bad(client: openai.OpenAI, messages: list[dict[str, Any]]) -> str:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="lm", messages=messages, max_tokens=2)
    body = info.value.body
    assert isinstance(body, dict) and body.get("message") and body.get("param"), body
    return str(body)


def _raw_part(data: str, fmt: str) -> dict[str, Any]:
    """A user turn with one input_audio part of `data` (any text) declared `fmt`."""
    audio = {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
    return {"role": "user", "content": [audio, {"type": "text", "text": "Hi"}]}


def _huge_declared() -> bytes:
    """A consistent WAV header declaring an hour: 2-byte frames at 1 Hz, 7,200 data bytes."""
    out = bytearray(wav_bytes(np.zeros(3600, np.float32), rate=1))
    assert struct.unpack_from("<I", out, 24)[0] == 1
    return bytes(out)


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (_raw_part("not*base64!", "wav"), "base64"),
        (_raw_part("", "wav"), "base64"),
        (audio_message(WAV, "mp3"), "declared mp3 but the file is WAV"),
        (audio_message(flac_bytes(tone()), "wav"), "declared wav but the file is FLAC"),
        (audio_message(WAV, "ogg"), "unsupported audio format"),
        (audio_message(WAV[: len(WAV) // 2]), "truncated"),
        (audio_message(wav_bytes(tone(seconds=0.0))), "empty"),
        (audio_message(_huge_declared()), "5-second limit"),
        (audio_message(wav_bytes(tone(seconds=MAX_SECONDS + 1))), "5-second limit"),
        (audio_message(adpcm_wav(MAX_SECONDS + 1, byte_rate=1_000_000)), "5-second limit"),
        (audio_message(mp3_silence(MAX_SECONDS + 1), "mp3"), "5-second limit"),
        (audio_message(mp3_silence(MAX_SECONDS + 1, junk_at=9), "mp3"), "5-second limit"),
        (audio_message(mp3_silence(1.0), "wav"), "declared wav but the file is MP3"),
        (audio_message(b"RIFF\0\0\0\0WAVEjunk"), "no data chunk"),
        (audio_message(flac_bytes(tone(), declare_total=False), "flac"), "cannot be decoded"),
    ],
)
def test_bad_audio_is_a_400_naming_messages(
    client: openai.OpenAI, message: dict[str, Any], says: str
) -> None:
    assert says in _bad(client, [message])


@pytest.mark.parametrize(
    "audio", [{"data": "AAAA"}, {"format": "wav"}, "AAAA", {"data": 3, "format": "wav"}]
)
def test_malformed_input_audio_parts_are_400s(hearing: Server, audio: Any) -> None:
    part = {"type": "input_audio", "input_audio": audio}
    r = httpx.post(
        f"{hearing.url}/v1/chat/completions",
        json={"model": "lm", "messages": [{"role": "user", "content": [part]}]},
        headers=auth(),
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_too_much_audio_together_is_a_400(client: openai.OpenAI) -> None:
    three = wav_bytes(tone(seconds=3.0))
    two_clips = {"role": "user", "content": [audio_message(three)["content"][0]] * 2}
    assert "5-second limit" in _bad(client, [two_clips])
    nine = {"role": "user", "content": [audio_message(WAV)["content"][0]] * 9}
    assert "at most" in _bad(client, [nine])


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.one_of(
        st.text(max_size=40),
        st.binary(max_size=64).map(b64),
        st.integers(0, len(WAV)).map(lambda n: b64(WAV[:n])),
        st.tuples(st.integers(4, 43), st.binary(min_size=1, max_size=4)).map(
            lambda t: b64(WAV[: t[0]] + t[1] + WAV[t[0] + len(t[1]) :])
        ),
    ),
    fmt=st.sampled_from(["wav", "mp3", "flac", "ogg", "", "WAV"]),
)
def test_fuzzed_input_audio_never_5xx(hearing: Server, data: str, fmt: str) -> None:
    r = httpx.post(
        f"{hearing.url}/v1/chat/completions",
        json={"model": "lm", "max_tokens": 1, "messages": [_raw_part(data, fmt)]},
        headers=auth("hear2"),
        timeout=120,
    )
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code == 400 and r.json()["error"]["message"], r.text


def test_multimodal_data_bad_audio_is_a_llama_server_400(hearing: Server) -> None:
    prompt = {"prompt_string": f"{MEDIA_MARKER} Hi", "multimodal_data": [b64(WAV[:60])]}
    r = httpx.post(
        f"{hearing.url}/completion", json={"prompt": prompt, "n_predict": 1}, headers=auth()
    )
    assert r.status_code == 400 and "truncated" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("which", ["vlm_server", "text_server"])
def test_audio_to_a_model_that_does_not_hear_is_a_400(
    which: str, request: pytest.FixtureRequest
) -> None:
    srv: Server = request.getfixturevalue(which)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="does not take audio"):
        client.chat.completions.create(model="lm", messages=[audio_message(WAV)], max_tokens=1)
    prompt = {"prompt_string": f"{MEDIA_MARKER} Hi", "multimodal_data": [b64(WAV)]}
    r = httpx.post(f"{srv.url}/completion", json={"prompt": prompt, "n_predict": 1}, timeout=60)
    assert r.status_code == 400 and "does not take audio" in r.text, r.text


def test_responses_take_no_audio(hearing: Server) -> None:
    """Responses' input content has no audio part: a 400 in OpenAI's shape saying where."""
    part = audio_message(WAV)["content"][0]
    r = httpx.post(
        f"{hearing.url}/v1/responses",
        json={"model": "lm", "input": [{"role": "user", "content": [part]}]},
        headers=auth(),
        timeout=60,
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "input" and "/v1/chat/completions" in err["message"], err


def test_an_image_to_a_model_that_only_hears_is_a_400(client: openai.OpenAI) -> None:
    url = "data:image/png;base64," + b64(png_bytes(sample_image()))
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    with pytest.raises(openai.BadRequestError, match="does not take images"):
        client.chat.completions.create(model="lm", messages=[image], max_tokens=1)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    blob=st.one_of(
        st.binary(max_size=48),
        st.integers(0, len(WAV)).map(lambda n: WAV[:n]),
        st.integers(0, 200).map(lambda n: flac_bytes(tone())[:n]),
        st.binary(max_size=32).map(lambda b: WAV[:20] + b + WAV[20 + len(b) :]),
    ),
    markers=st.integers(0, 2),
)
def test_fuzzed_multimodal_data_never_5xx(hearing: Server, blob: bytes, markers: int) -> None:
    prompt = {"prompt_string": f"{MEDIA_MARKER * markers} Hi", "multimodal_data": [b64(blob)]}
    r = httpx.post(
        f"{hearing.url}/completion",
        json={"prompt": prompt, "n_predict": 1},
        headers=auth("hear2"),
        timeout=120,
    )
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.status_code == 400 and r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    ("blob", "fmt"), [(mp3_silence(0.5), "mp3"), (flac_bytes(tone(440.0, 0.4)), "flac")]
)
def test_mp3_and_flac_clips_are_heard(client: openai.OpenAI, blob: bytes, fmt: str) -> None:
    resp = client.chat.completions.create(
        model="lm", messages=[audio_message(blob, fmt)], max_tokens=2, temperature=0
    )
    assert resp.usage is not None and resp.usage.prompt_tokens > TOKENS_PER_WINDOW


def test_the_daemon_still_answers_after_the_fuzz(client: openai.OpenAI) -> None:
    """Last in the module: after every refusal and fuzzed input above, a clip is heard."""
    resp = client.chat.completions.create(
        model="lm", messages=[audio_message(WAV)], max_tokens=2, temperature=0
    )
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.prompt_tokens > TOKENS_PER_WINDOW
