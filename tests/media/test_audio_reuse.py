"""A clip is named by the digest of its bytes wherever KV is reused: a returning request finds
its clip again in the prompt cache once both slots went to other prompts, a different clip
after the same text reuses only the text before it, and another API key sending the very
same clip reuses nothing. Each answer equals the one computed from nothing."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx

from tests.conftest import Server
from tests.media.tiny_audio import TOKENS_PER_WINDOW, tone, wav_bytes

# Long enough that a restore beats the slot's shared text by more than the prompt cache's
# block (64 tokens): shorter prompts are not worth a restore and are decoded again.
QUESTION = "What do you hear? " + "Please describe the sound in detail. " * 12
MINE, OTHER = "hear3", "hear4"  # keys no other test module uses


def body(freq: float, text: str = QUESTION) -> dict[str, Any]:
    clip = base64.b64encode(wav_bytes(tone(freq, 0.3))).decode()
    content = [
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}},
        {"type": "text", "text": text},
    ]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0}


def answer(srv: Server, req: dict[str, Any], key: str) -> tuple[str, int, int]:
    """The greedy text, the prompt's tokens and those found cached."""
    r = httpx.post(
        f"{srv.url}/v1/chat/completions",
        json=req,
        headers={"Authorization": f"Bearer {key}"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return r.json()["choices"][0]["message"]["content"], usage["prompt_tokens"], cached


def cache_hits(srv: Server) -> float:
    text = httpx.get(
        f"{srv.url}/metrics", headers={"Authorization": f"Bearer {MINE}"}, timeout=30
    ).text
    return sum(
        float(v) for v in re.findall(r"^edged_prompt_cache_hits_total\{.*\} (\S+)$", text, re.M)
    )


def test_a_clip_is_found_again_by_its_bytes_and_only_by_its_owner(audio_server: Server) -> None:
    first, n_prompt, cached = answer(audio_server, body(300.0), MINE)
    assert cached == 0 and n_prompt > TOKENS_PER_WINDOW

    # A different clip after the same text: only the text before the clip is reused.
    _, _, cached_other_clip = answer(audio_server, body(310.0), MINE)
    assert cached_other_clip < n_prompt - TOKENS_PER_WINDOW

    # Both slots now hold other prompts (the 310 Hz one and this): 300 Hz is in the cache.
    answer(audio_server, body(320.0, "Is it loud?"), MINE)
    hits = cache_hits(audio_server)
    again, _, cached_again = answer(audio_server, body(300.0), MINE)
    assert again == first
    assert cached_again >= n_prompt - 8, (cached_again, n_prompt)
    assert cache_hits(audio_server) == hits + 1

    # Another key sends the very same request: nothing of ours, the same answer.
    theirs, _, cached_theirs = answer(audio_server, body(300.0), OTHER)
    assert (theirs, cached_theirs) == (first, 0)
