"""LoRA adapters through the daemon: per-request sets batched together stay exact, scales and
the BASE+NAME alias, every dialect's field, and KV never crossing adapter sets."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import Server, stop_server
from tests.e2e.test_errors import assert_error
from tests.lora.conftest import MODEL, lora_server

PROMPT = "Once upon a time, in a small village by the sea, there lived"


@pytest.fixture(scope="module")
def http(server4: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server4.url, timeout=600) as c:
        yield c


def complete(
    http: httpx.Client, lora: list[dict[str, Any]] | None = None, model: str = MODEL, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        **extra,
    }
    if lora is not None:
        body["lora"] = lora
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def text(http: httpx.Client, lora: list[dict[str, Any]] | None = None, **kw: Any) -> str:
    return complete(http, lora, **kw)["choices"][0]["text"]


def first_logprobs(http: httpx.Client, lora: list[dict[str, Any]] | None) -> dict[str, float]:
    body = complete(http, lora, max_tokens=1, logprobs=5)
    return body["choices"][0]["logprobs"]["top_logprobs"][0]


def test_adapters_change_the_output(http: httpx.Client) -> None:
    base = first_logprobs(http, None)
    assert first_logprobs(http, [{"name": "a"}]) != base
    assert first_logprobs(http, [{"name": "b", "scale": 1.0}]) != base


def test_mixed_adapter_sets_batched_equal_their_solo_runs(http: httpx.Client) -> None:
    sets: list[list[dict[str, Any]] | None] = [
        [{"name": "a"}],
        [{"name": "b"}],
        None,
        [{"name": "a"}, {"name": "b", "scale": 0.8}],
    ]
    solo = [text(http, s, max_tokens=8) for s in sets]
    assert len(set(solo)) > 1  # the sets differ: mixing them up would show
    with ThreadPoolExecutor(len(sets)) as pool:
        together = list(pool.map(lambda s: text(http, s, max_tokens=8), sets))
    assert together == solo


def test_scale_per_request(http: httpx.Client) -> None:
    base = first_logprobs(http, None)
    assert first_logprobs(http, [{"name": "a", "scale": 0.0}]) == base  # scale 0: adapter off
    one = first_logprobs(http, [{"name": "a", "scale": 1.0}])
    assert first_logprobs(http, [{"name": "a"}]) == one  # the --lora default scale is 1
    assert first_logprobs(http, [{"name": "a", "scale": 2.0}]) != one
    # b's --lora scale is 0.5: naming it without a scale is naming it at 0.5
    assert first_logprobs(http, [{"name": "b"}]) == first_logprobs(
        http, [{"name": "b", "scale": 0.5}]
    )


def test_alias_base_plus_name(server4: Server, http: httpx.Client) -> None:
    client = OpenAI(base_url=f"{server4.url}/v1", api_key="x", max_retries=0, timeout=600)
    messages = [{"role": "user", "content": "Tell me about the sea."}]

    def chat(model: str, lora: list[dict[str, Any]] | None = None) -> str:
        extra = {"lora": lora} if lora is not None else None
        r = client.chat.completions.create(
            model=model, messages=messages, max_tokens=6, temperature=0, extra_body=extra
        )
        return r.choices[0].message.content or ""

    assert chat(f"{MODEL}+a") == chat(MODEL, [{"name": "a"}])
    assert chat(f"{MODEL}+b") == chat(MODEL, [{"name": "b", "scale": 0.5}])
    # the field's scale wins over the alias's default
    assert chat(f"{MODEL}+b", [{"name": "b", "scale": 0.0}]) == chat(MODEL)
    r = http.post(
        "/v1/chat/completions",
        json={"model": f"{MODEL}+nope", "messages": messages, "max_tokens": 1},
    )
    assert_error(r, 400, "model")


GENERATION_BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"prompt": PROMPT, "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/responses": {"input": "hi", "max_output_tokens": 2},
    "/v1/messages": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/inference": {"prompt": PROMPT, "max_tokens": 2},
    "/api/chat": {
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 2},
    },
    "/api/generate": {"prompt": PROMPT, "stream": False, "options": {"num_predict": 2}},
}


@pytest.mark.parametrize("path", sorted(GENERATION_BODIES))
def test_every_dialect_takes_lora(http: httpx.Client, path: str) -> None:
    body = {"model": MODEL, **GENERATION_BODIES[path]}
    ok = http.post(path, json={**body, "lora": [{"name": "a", "scale": 0.5}]})
    assert ok.status_code == 200, ok.text
    alias = http.post(path, json={**body, "model": f"{MODEL}+b"})
    assert alias.status_code == 200, alias.text
    bad = http.post(path, json={**body, "lora": [{"name": "nope"}]})
    assert bad.status_code == 400, bad.text
    shape = bad.json()
    if path == "/v1/messages":
        assert shape["type"] == "error" and "nope" in shape["error"]["message"]
    elif path.startswith("/api/"):
        assert "nope" in shape["error"]
    else:
        assert assert_error(bad, 400, "lora")["message"].count("nope")


def test_api_generate_request_id_keeps_its_adapters(http: httpx.Client) -> None:
    def gen(lora: list[dict[str, Any]] | None, prompt: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {
            "request_id": "lora-rid",
            "stream_response": False,
            "generation_config": {"do_sample": False, "max_new_tokens": 4},
        }
        if prompt is not None:
            body["prompt"] = prompt
        if lora is not None:
            body["lora"] = lora
        return http.post("/api/generate", json=body)

    http.delete("/api/generate/lora-rid")
    assert gen([{"name": "a"}], PROMPT).status_code == 200
    assert_error(gen(None), 400, "lora")
    assert_error(gen([{"name": "a", "scale": 0.5}]), 400, "lora")
    cont = gen([{"name": "a"}])
    assert cont.status_code == 200, cont.text
    # The refusals kept the entry: the same adapters still continue it.
    assert gen([{"name": "a"}]).status_code == 200


def test_llama_server_lora_ids(http: httpx.Client) -> None:
    """/completion's own form: [{id, scale}], ids in --lora order (a = 0, b = 1)."""

    def completion(lora: list[dict[str, Any]] | None) -> httpx.Response:
        body: dict[str, Any] = {"prompt": PROMPT, "n_predict": 1, "temperature": 0, "n_probs": 5}
        if lora is not None:
            body["lora"] = lora
        return http.post("/completion", json=body)

    listed = http.get("/lora-adapters").json()
    assert [(x["id"], x["name"], x["scale"]) for x in listed] == [(0, "a", 1.0), (1, "b", 0.5)]
    by_id = completion([{"id": 0, "scale": 1.0}])
    assert by_id.status_code == 200, by_id.text
    probs = by_id.json()["completion_probabilities"]
    assert probs != completion(None).json()["completion_probabilities"]
    assert (
        probs
        == completion([{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]).json()[
            "completion_probabilities"
        ]
    )
    for bad in ([{"id": 2, "scale": 1.0}], [{"name": "a"}]):
        r = completion(bad)
        assert r.status_code == 400, r.text
        assert set(r.json()["error"]) == {"code", "message", "type"}  # llama-server's shape


def test_prefix_cache_is_keyed_by_adapter_set(
    smollm_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """One slot: a prompt cached under one adapter set is recomputed under another."""
    srv = lora_server(tmp_path, smollm_adapters, "--parallel", "1")
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:

            def run(lora: list[dict[str, Any]] | None) -> tuple[str, int]:
                body = complete(c, lora, max_tokens=4)
                return body["choices"][0]["text"], body["usage"]["prompt_tokens_details"][
                    "cached_tokens"
                ]

            base, _ = run(None)
            with_a, cached = run([{"name": "a"}])
            assert cached == 0 and with_a != base
            again, cached = run(None)
            assert (again, cached) == (base, 0)
            _, cached = run(None)
            assert cached > 0  # the same set does reuse its prefix
            _, cached = run([{"name": "a", "scale": 0.5}])
            assert cached == 0  # another scale is another set
            assert run([{"name": "a"}]) == (with_a, 0)
    finally:
        stop_server(srv)


def test_responses_chain_under_another_adapter_set(http: httpx.Client) -> None:
    """A stored response continued under another set is recomputed, not continued from KV
    made with other adapters: same answer as the chain never stored."""

    def respond(lora: list[dict[str, Any]] | None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": MODEL, "max_output_tokens": 4, "temperature": 0, **extra}
        if lora is not None:
            body["lora"] = lora
        r = http.post("/v1/responses", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    first = respond([{"name": "a"}], input="Name a colour.", store=True)
    follow = respond(None, input="And another?", previous_response_id=first["id"])
    again = respond([{"name": "a"}], input="And another?", previous_response_id=first["id"])
    assert follow["output"] != [] and again["output"] != []
    history = [
        {"role": "user", "content": "Name a colour."},
        *first["output"],
        {"role": "user", "content": "And another?"},
    ]
    unstored = respond(None, input=history, store=False)
    assert follow["output"][-1]["content"] == unstored["output"][-1]["content"]
