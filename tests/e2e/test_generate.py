"""/inference, /api/generate and /api/generate-batch over real HTTP: the seed payloads verbatim."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server

SEED_INFERENCE = {
    "model": "togethercomputer/RedPajama-INCITE-7B-Instruct",
    "prompt": "Q: The capital of France is?\nA:",
    "temperature": 0.8,
    "top_p": 0.7,
    "top_k": 50,
    "max_tokens": 1,
    "repetition_penalty": 1,
}
SEED_GENERATE = {
    "request_id": "YmFzZTY0",
    "prompt": "[INST] Generate a very long poem about 1000 cats [/INST]\n\n",
    "only_new_tokens": True,
    "stream_response": True,
    "generation_config": {
        "num_beams": 1,
        "do_sample": True,
        "temperature": 1,
        "top_p": 1,
        "top_k": 50,
        "max_new_tokens": 2048,
        "repetition_penalty": 1,
        "length_penalty": 1,
    },
}
SEED_BATCH = {
    "prompts": [
        {
            "request_id": "YmFzZTY0",
            "prompt": "[INST] Generate a very long poem about 1000 cats [/INST]\n\n",
        },
        {
            "request_id": "rFERfgE",
            "prompt": "[INST] Generate a short poem about 1000 dogs [/INST]\n\n",
        },
    ],
    "only_new_tokens": False,
    "generation_config": {
        "num_beams": 1,
        "do_sample": True,
        "temperature": 1,
        "top_p": 1,
        "top_k": 50,
        "max_new_tokens": 100,
        "repetition_penalty": 1,
        "length_penalty": 1,
    },
}
GREEDY = {"do_sample": False, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def gen(http: httpx.Client, rid: str, prompt: str | None = None, **cfg: object) -> str:
    body: dict[str, object] = {
        "request_id": rid,
        "stream_response": False,
        "generation_config": {**GREEDY, **cfg},
    }
    if prompt is not None:
        body["prompt"] = prompt
    r = http.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    return r.text


def test_inference_seed_payload(http: httpx.Client) -> None:
    r = http.post("/inference", json=SEED_INFERENCE)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "status",
        "prompt",
        "model",
        "model_owner",
        "tags",
        "num_returns",
        "args",
        "subjobs",
        "output",
    }
    assert body["status"] == "finished"
    assert body["prompt"] == [SEED_INFERENCE["prompt"]]
    assert body["model"] == SEED_INFERENCE["model"]
    assert body["args"] == SEED_INFERENCE
    assert body["num_returns"] == 1 and body["subjobs"] == [] and body["tags"] == {}
    out = body["output"]
    assert out["result_type"] == "language-model-inference"
    assert out["raw_compute_time"] > 0
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert isinstance(choice["text"], str) and choice["text"]


def test_inference_greedy_paris_and_n(http: httpx.Client) -> None:
    body = {**SEED_INFERENCE, "temperature": 0}
    assert http.post("/inference", json=body).json()["output"]["choices"][0]["text"] == " Paris"
    many = http.post(
        "/inference", json={**SEED_INFERENCE, "max_tokens": 8, "n": 3, "seed": 1}
    ).json()
    assert many["num_returns"] == 3
    assert [c["index"] for c in many["output"]["choices"]] == [0, 1, 2]


def test_inference_validation(http: httpx.Client) -> None:
    r = http.post("/inference", json={**SEED_INFERENCE, "top_p": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"
    r = http.post("/inference", json={**SEED_INFERENCE, "model": "nope"})
    assert r.status_code == 404


def test_generate_seed_payload_streams_plain_text(http: httpx.Client) -> None:
    """The seed reads the body with a stream reader; read a few chunks and hang up."""
    payload = {**SEED_GENERATE, "request_id": "seed-stream"}
    chunks = []
    with http.stream("POST", "/api/generate", json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        for chunk in r.iter_text():
            chunks.append(chunk)
            if len(chunks) == 8:
                break
    assert len(chunks) == 8 and all(chunks)
    # The hang-up cancelled the generation: the id is free again and continues.
    deadline = time.monotonic() + 10
    while True:
        r = http.post(
            "/api/generate",
            json={
                "request_id": "seed-stream",
                "stream_response": False,
                "generation_config": {"max_new_tokens": 4},
            },
        )
        if r.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text


def test_continuation_24_plus_24_equals_48(http: httpx.Client) -> None:
    prompt = "The history of the printing press"
    whole = gen(http, "whole", prompt, max_new_tokens=48)
    first = gen(http, "split", prompt)
    second = gen(http, "split", "a different prompt that must be ignored")
    assert first + second == whole


def test_only_new_tokens_false_returns_full_sequence(http: httpx.Client) -> None:
    prompt = "Q: The capital of France is?\nA:"
    text = http.post(
        "/api/generate",
        json={
            "request_id": "full",
            "prompt": prompt,
            "only_new_tokens": False,
            "stream_response": False,
            "generation_config": {**GREEDY, "max_new_tokens": 1},
        },
    ).text
    assert text == prompt + " Paris"


def test_new_request_id_needs_prompt(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"request_id": "never-seen", "stream_response": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_busy_request_id_is_409(http: httpx.Client, base_url: str) -> None:
    body = {
        "request_id": "busy",
        "prompt": "1, 2, 3, 4, 5,",
        "stream_response": True,
        "generation_config": {"do_sample": False, "max_new_tokens": 400},
    }
    with http.stream("POST", "/api/generate", json=body) as r:
        chunks = r.iter_text()  # keep the iterator: closing it hangs up
        next(chunks)
        again = httpx.post(f"{base_url}/api/generate", json=body, timeout=30)
        assert again.status_code == 409
        assert again.json()["error"]["param"] == "request_id"


@pytest.mark.parametrize(
    ("cfg", "param"),
    [
        ({"num_beams": 0}, "generation_config"),
        ({"num_beams": 99}, "generation_config.num_beams"),
        ({"max_new_tokens": -1}, "generation_config"),
        ({"temperature": 3}, "generation_config"),
        ({"top_p": 0}, "generation_config"),
        ({"repetition_penalty": 0}, "generation_config"),
    ],
)
def test_generation_config_validation(http: httpx.Client, cfg: dict, param: str) -> None:
    r = http.post(
        "/api/generate", json={"request_id": "v", "prompt": "x", "generation_config": cfg}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_batch_seed_payload_shapes_and_order(http: httpx.Client) -> None:
    r = http.post("/api/generate-batch", json=SEED_BATCH)
    assert r.status_code == 200
    items = r.json()
    assert [i["request_id"] for i in items] == ["YmFzZTY0", "rFERfgE"]
    for item, p in zip(items, SEED_BATCH["prompts"], strict=True):
        assert set(item) == {"request_id", "prompt", "response"}
        assert item["prompt"] == p["prompt"]
        assert item["response"]
    only_new = {
        **SEED_BATCH,
        "only_new_tokens": True,
        "prompts": [{"request_id": "b1", "prompt": "Hello"}, {"request_id": "b2", "prompt": "Bye"}],
    }
    items = http.post("/api/generate-batch", json=only_new).json()
    assert [set(i) for i in items] == [{"request_id", "response"}] * 2


def test_batch_items_continue_like_generate(http: httpx.Client) -> None:
    prompts = ["Once upon a time", "The recipe for bread"]
    wholes = [gen(http, f"bw{i}", p, max_new_tokens=48) for i, p in enumerate(prompts)]
    body = {
        "prompts": [{"request_id": f"bs{i}", "prompt": p} for i, p in enumerate(prompts)],
        "generation_config": GREEDY,
    }
    first = http.post("/api/generate-batch", json=body).json()
    body["prompts"] = [{"request_id": f"bs{i}", "prompt": "ignored"} for i in range(2)]
    second = http.post("/api/generate-batch", json=body).json()
    for i in range(2):
        assert first[i]["response"] + second[i]["response"] == wholes[i]


def test_batch_runs_concurrently(http: httpx.Client, base_url: str) -> None:
    """Batch prompts share decode steps: 4 prompts take far less than 4× one prompt's steps."""
    body = {
        "prompts": [{"request_id": f"c{i}", "prompt": f"Story {i}:"} for i in range(4)],
        "generation_config": {"do_sample": False, "max_new_tokens": 32},
    }
    r = http.post("/api/generate-batch", json=body)
    assert r.status_code == 200 and len(r.json()) == 4


def test_batch_duplicate_ids_refused(http: httpx.Client) -> None:
    body = {"prompts": [{"request_id": "d", "prompt": "a"}, {"request_id": "d", "prompt": "b"}]}
    r = http.post("/api/generate-batch", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompts"


def test_beam_search_over_http_is_deterministic(http: httpx.Client) -> None:
    cfg = {"num_beams": 4, "do_sample": False, "max_new_tokens": 16, "length_penalty": 1.0}
    a = gen(http, "beam-a", "The best way to learn a language is", **cfg)
    b = gen(http, "beam-b", "The best way to learn a language is", **cfg)
    greedy = gen(http, "beam-g", "The best way to learn a language is", max_new_tokens=16)
    assert a == b
    assert a and greedy


def test_dotenv_defaults_and_key_isolation(tmp_path: Path) -> None:
    """Defaults come from .env; one API key cannot continue another key's request_id."""
    (tmp_path / ".env").write_text(
        "EDGED_GENERATION__MAX_NEW_TOKENS=5\nEDGED_GENERATION__DO_SAMPLE=false\n"
        "EDGED_API_KEYS=key-one,key-two\n"
    )
    srv: Server = start_server(tmp_path, "--parallel", "2", "--ctx-size", "512")
    try:
        one = {"Authorization": "Bearer key-one"}
        two = {"x-api-key": "key-two"}
        url = f"{srv.url}/api/generate"
        prompt = "Q: The capital of France is?\nA:"
        body = {"request_id": "shared", "prompt": prompt, "stream_response": False}
        a = httpx.post(url, json=body, headers=one, timeout=60)
        assert a.status_code == 200
        explicit = httpx.post(
            url,
            json={
                **body,
                "request_id": "explicit",
                "generation_config": {"max_new_tokens": 5, "do_sample": False},
            },
            headers=one,
            timeout=60,
        ).text
        assert a.text == explicit  # .env: 5 greedy tokens
        # key-two's "shared" is a fresh generation of its own prompt, not key-one's sequence.
        b = httpx.post(url, json={**body, "prompt": prompt}, headers=two, timeout=60)
        assert b.status_code == 200 and b.text == a.text
        missing = httpx.post(
            url, json={"request_id": "explicit", "stream_response": False}, headers=two, timeout=60
        )
        assert missing.status_code == 400  # key-two has no "explicit": a prompt is required
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        # key-one continues its own sequence.
        c = httpx.post(
            url, json={"request_id": "shared", "stream_response": False}, headers=one, timeout=60
        )
        assert c.status_code == 200 and c.text != a.text
    finally:
        stop_server(srv)


def test_parallel_generate_requests(base_url: str) -> None:
    results: dict[int, int] = {}

    def run(i: int) -> None:
        r = httpx.post(
            f"{base_url}/api/generate",
            timeout=120,
            json={
                "request_id": f"par{i}",
                "prompt": f"Poem {i}:",
                "stream_response": False,
                "generation_config": {"max_new_tokens": 16},
            },
        )
        results[i] = r.status_code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results.values()) == {200}
