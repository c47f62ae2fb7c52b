"""The prompt cache over real HTTP (issue 13): a returning conversation whose slot was taken
reports its restored history in usage and timings, another API key gets no hit, metrics
count it, and a drained server leaves no spill file behind."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, start_server, stop_server, wait_healthy

MODEL = "SmolLM2-135M-Instruct.Q4_1"
BOUND = 64 << 20
WORDS = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompt-cache")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[Server]:
    s = start_server(
        tmp_path_factory.mktemp("pc-server"),
        *("--threads", "1", "--ctx-size", "512", "--parallel", "2"),
        *("--cache-ram", str(BOUND), "--cache-dir", str(cache_dir)),
        env={"EDGED_API_KEYS": "alpha,beta"},
        wait=False,
    )
    wait_healthy(s, 600)  # the shared test machines can take minutes to start a server
    yield s
    stop_server(s)


def chat(srv: Server, key: str, messages: list[dict[str, str]], max_tokens: int = 4) -> Any:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=600)
    return client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,  # type: ignore[arg-type]
    )


def metric(srv: Server, name: str) -> float:
    text = httpx.get(f"{srv.url}/metrics", headers={"x-api-key": "alpha"}, timeout=30).text
    m = re.search(rf"^{name}(?:_total)?\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_returning_conversation_hits_only_for_its_key(srv: Server, cache_dir: Path) -> None:
    story = " ".join(WORDS[(i * i) % len(WORDS)] for i in range(160))
    talk = [{"role": "user", "content": f"Remember these words: {story}"}]
    first = chat(srv, "alpha", talk)
    # Both slots taken by other conversations at once (one after the other, beta's second
    # note would reuse beta's own slot: alpha's slot counts as no prefix of beta's).
    with ThreadPoolExecutor(2) as pool:
        notes = [[{"role": "user", "content": f"Note {i}: {story[:200]}"}] for i in range(2)]
        list(pool.map(lambda m: chat(srv, "beta", m, 24), notes))
    talk += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "Which came first?"},
    ]
    # The same conversation under another key: no hit beyond the chat template's opening,
    # which beta's own notes left in the slots (alpha's history is 200 tokens long).
    other = chat(srv, "beta", talk)
    assert other.usage.prompt_tokens_details.cached_tokens < 64
    back = chat(srv, "alpha", talk)
    cached = back.usage.prompt_tokens_details.cached_tokens
    assert cached >= 128
    timings = back.model_extra["timings"]
    assert timings["cache_n"] == cached
    assert timings["prompt_n"] == back.usage.prompt_tokens - cached
    assert metric(srv, "edged_prompt_cache_hits") >= 1
    assert metric(srv, "edged_prompt_cache_hit_tokens") >= cached
    assert 0 < metric(srv, "edged_prompt_cache_bytes") <= BOUND
    assert metric(srv, "edged_prompt_cache_evictions") >= 0
    assert list(cache_dir.iterdir())  # the model's private spill directory


def test_drain_removes_the_spill_directory(srv: Server, cache_dir: Path) -> None:
    assert stop_server(srv) == 0
    assert not list(cache_dir.rglob("*"))


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_idle_memory_with_the_cache_full_stays_within_its_bound(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Ten ~400-token conversations over two slots would keep ~90 MiB of KV state; with
    --cache-ram 16 MiB the cache evicts, and the idle server grows by no more than the
    bound (plus allocator slack) over its size once both slots had such a conversation
    (llama.cpp's and Python's buffers for long prompts are in place by then)."""
    bound = 16 << 20
    s = start_server(
        tmp_path_factory.mktemp("pc-full"),
        *("--threads", "1", "--ctx-size", "1024", "--parallel", "2"),
        *("--cache-ram", str(bound)),
        wait=False,
    )
    try:
        wait_healthy(s, 600)

        def talk(c: int) -> None:
            words = " ".join(WORDS[(c + i * i) % len(WORDS)] for i in range(360))
            chat(s, "any", [{"role": "user", "content": f"Conversation {c}: {words}"}])

        talk(0)
        talk(1)
        before = _rss(s.proc.pid)
        for c in range(2, 12):  # each takes a slot whose conversation goes to the cache
            talk(c)
        assert metric(s, "edged_prompt_cache_evictions") >= 1
        held = metric(s, "edged_prompt_cache_bytes")
        assert 0 < held <= bound
        grown = _rss(s.proc.pid) - before
        print(f"cache holds {held / 2**20:.1f} MiB; the server grew {grown / 2**20:.1f} MiB")
        assert grown <= bound + (16 << 20), (grown >> 20, held)
    finally:
        stop_server(s)
