"""`edged serve --speculate`: the flags reach the engine, answers equal a plain server's
greedy text, and the counters are on /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
# Up to 256 KV cells a sequence: where this CPU's flash attention computes one row and a few
# rows alike, so the load-time probe lets speculation run (README: Speculative decoding).
SHORT = ("--ctx-size", "256")


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("spec")
    s = start_server(
        tmp, "--speculate", "--flash-attn", "--draft-max", "4", "--parallel", "2", *SHORT
    )
    yield s
    stop_server(s)


def test_speculating_server_answers_and_counts(spec_server: Server, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{spec_server.url}/v1", api_key="none")
    got = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert got.usage is not None and got.usage.completion_tokens == 12
    # The same request on a plain server (same flash attention): the same text.
    plain = start_server(tmp_path, "--flash-attn", "--parallel", "2", *SHORT)
    try:
        want = openai.OpenAI(base_url=f"{plain.url}/v1", api_key="none").completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", prompt=PROMPT, max_tokens=12, temperature=0
        )
    finally:
        stop_server(plain)
    assert got.choices[0].text == want.choices[0].text
    metrics = httpx.get(f"{spec_server.url}/metrics").text
    assert 'edged_spec_drafted_tokens_total{model="' in metrics
    assert 'edged_spec_accepted_tokens_total{model="' in metrics
