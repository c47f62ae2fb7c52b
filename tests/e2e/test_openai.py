"""The OpenAI-compatible API over real HTTP, driven by the official `openai` client."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from daemon.version import fingerprint

PARIS_PROMPT = "Q: The capital of France is?\nA:"


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_completion_greedy_paris(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", prompt=PARIS_PROMPT, max_tokens=1, temperature=0
    )
    assert r.object == "text_completion"
    assert r.choices[0].text == " Paris"
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].index == 0
    assert r.usage is not None
    assert r.usage.completion_tokens == 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + 1


def test_chat_completion_shape(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=24,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "SmolLM2-135M-Instruct.Q4_1"
    assert r.choices[0].message.role == "assistant"
    # What a 135M Q4_1 model says here depends on the CPU's kernels (AVX-512 machines answer
    # "Paris", others drift into French): check the answer is greedy-stable, not its words.
    again = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        max_tokens=24,
        temperature=0,
    )
    assert r.choices[0].message.content
    assert again.choices[0].message.content == r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 10


def test_chat_multi_turn_uses_history(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "My name is Zorblax. Remember it."},
        {"role": "assistant", "content": "Nice to meet you, Zorblax!"},
        {"role": "user", "content": "What is my name?"},
    ]
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=messages, max_tokens=16, temperature=0
    )
    assert "Zorblax" in (r.choices[0].message.content or "")


def test_chat_stream_matches_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=20,
        temperature=0,
    )
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_completion_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", prompt="Once upon a time", max_tokens=16, temperature=0
    )
    parts = list(
        client.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1",
            prompt="Once upon a time",
            max_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length"


def test_completion_prompt_list_and_tokens(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        prompt=[PARIS_PROMPT, "Q: What is 2+2?\nA:"],
        max_tokens=1,
        temperature=0,
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == " Paris"
    ids = httpx.post(
        f"{client.base_url}completions",
        json={"prompt": PARIS_PROMPT, "max_tokens": 0},
    )
    assert ids.status_code == 200


def test_stop_string_cuts_output(client: openai.OpenAI) -> None:
    base = (
        client.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0
        )
        .choices[0]
        .text
    )
    assert " 6" in base
    r = client.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        prompt="1, 2, 3, 4,",
        max_tokens=12,
        temperature=0,
        stop=[" 6"],
    )
    assert r.choices[0].text == base[: base.index(" 6")]
    assert r.choices[0].finish_reason == "stop"


def test_seed_is_reproducible_alone_and_batched(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="SmolLM2-135M-Instruct.Q4_1",
        prompt="Write a word:",
        max_tokens=24,
        temperature=1.0,
        seed=1234,
    )
    alone = client.completions.create(**kwargs).choices[0].text
    results: dict[int, str] = {}

    def run(i: int) -> None:
        if i == 0:
            results[i] = client.completions.create(**kwargs).choices[0].text
        else:
            results[i] = (
                client.completions.create(
                    model="SmolLM2-135M-Instruct.Q4_1",
                    prompt=f"Story number {i}:",
                    max_tokens=32,
                    temperature=1.0,
                )
                .choices[0]
                .text
            )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == alone
    other = client.completions.create(**{**kwargs, "seed": 99}).choices[0].text
    assert other != alone


def test_models_lists_files_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert "SmolLM2-135M-Instruct.Q4_1" in ids
    assert "togethercomputer/RedPajama-INCITE-7B-Instruct" in ids


def test_alias_serves_the_model(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="togethercomputer/RedPajama-INCITE-7B-Instruct",
        prompt=PARIS_PROMPT,
        max_tokens=1,
        temperature=0,
    )
    assert r.choices[0].text == " Paris"
    assert r.model == "togethercomputer/RedPajama-INCITE-7B-Instruct"


def test_health_lists_loaded_model(base_url: str) -> None:
    r = httpx.get(f"{base_url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert [m["name"] for m in body["models"]] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_eight_concurrent_streams_interleave(base_url: str) -> None:
    """Eight streams run at once: their tokens arrive interleaved, not one after another."""
    arrivals: dict[int, list[float]] = {}

    def run(i: int) -> None:
        times: list[float] = []
        with httpx.stream(
            "POST",
            f"{base_url}/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": f"Tell me story number {i}."}],
                "max_tokens": 32,
                "temperature": 0.8,
                "seed": i,
                "stream": True,
            },
            timeout=120,
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        times.append(time.monotonic())
        arrivals[i] = times

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(arrivals) == 8
    assert all(len(v) >= 4 for v in arrivals.values())
    # Every stream produced tokens before every other stream finished.
    firsts = [v[0] for v in arrivals.values()]
    lasts = [v[-1] for v in arrivals.values()]
    assert max(firsts) < min(lasts)


def test_n_choices_are_distinct_and_counted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Invent a name for a cat."}],
        max_tokens=12,
        temperature=1.0,
        seed=5,
        n=4,
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1
    assert r.usage is not None
    # Usage counts every choice's tokens: at least one each, at most max_tokens each.
    assert 4 <= r.usage.completion_tokens <= 4 * 12
    single = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Invent a name for a cat."}],
        max_tokens=12,
        temperature=1.0,
        seed=5,
    )
    assert single.choices[0].message.content == texts[0]


def test_system_fingerprint_names_the_build(client: openai.OpenAI, base_url: str) -> None:
    """OpenAI's `system_fingerprint` on every completion body and chunk, llama-server's way
    (`b` + the build): the bindings' version, which pins llama.cpp, and edged's."""
    msgs: list[Any] = [{"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=2
    )
    text = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="Hi", max_tokens=2)
    chunks = list(
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=2, stream=True
        )
    )
    assert fingerprint().startswith("b") and "edged" in fingerprint()
    assert chat.system_fingerprint == text.system_fingerprint == fingerprint()
    assert {c.system_fingerprint for c in chunks} == {fingerprint()}
    props = httpx.get(f"{base_url}/props", timeout=30).json()
    assert props["build_info"] == fingerprint()


def test_chat_input_tokens_counts_the_prompt(client: openai.OpenAI, base_url: str) -> None:
    """llama-server's /chat/completions/input_tokens: the tokens the same chat's prompt has,
    nothing generated; the body is validated as the chat's (a bad tool is a 400)."""
    body: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "Count the tokens of this prompt, please."}],
    }
    chat = client.chat.completions.create(**body, max_tokens=1)
    for path in ("/v1/chat/completions/input_tokens", "/chat/completions/input_tokens"):
        r = httpx.post(f"{base_url}{path}", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert chat.usage is not None and r.json() == {"input_tokens": chat.usage.prompt_tokens}
    bad = {**body, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}
    r = httpx.post(f"{base_url}/v1/chat/completions/input_tokens", json=bad, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
