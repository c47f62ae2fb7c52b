"""The benchmark's own instruments against a real server: the lean SSE client and the raw loop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import raw
from client import run_round, stream

from daemon.engine.native.llama import Model


def test_round_streams_full_length_with_eog_banned(base_url: str, model_path: Path) -> None:
    ban = sorted(Model(model_path).eog_tokens)
    rnd = asyncio.run(run_round(base_url, 3, 12, ban, 0))
    assert rnd.level == 3 and len(rnd.results) == 3
    for r in rnd.results:
        assert r.usage_tokens == 12 and r.tokens == 12
        assert 1 <= len(r.token_times) <= 12  # deltas may carry several tokens
        assert 0 < r.ttft <= r.end - r.start
    assert rnd.tokens_per_s > 0 and rnd.decode_tokens_per_s > 0 and rnd.ttft_p50 > 0


def test_completion_stream_counts_text_deltas(base_url: str) -> None:
    body = {"prompt": "One, two, three,", "max_tokens": 3, "temperature": 0.0, "stream": True}
    r = asyncio.run(stream(base_url, body, "/v1/completions"))
    assert r.token_times and r.ttft > 0


def test_raw_loop_times_prefill_and_decode(model_path: Path) -> None:
    model = Model(model_path)
    prompts = raw.story_prompts(model, 2)
    assert prompts[0] != prompts[1] and prompts[0][:10] == prompts[1][:10]  # shared template
    run = raw.run(model, prompts, 4, 2)
    assert run.prefill_s > 0 and run.decode_s > 0
    assert run.tokens_per_s < run.decode_tokens_per_s
