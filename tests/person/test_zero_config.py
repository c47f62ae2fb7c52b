"""Zero-config answers, and what clients read: each seed document's example request copied
verbatim answers 200 on a fresh `edged serve`; usage/timings; GET /v1/models/{id}; admin."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from daemon.__main__ import _parser, settings_from_args
from daemon.app import engine_options
from daemon.config import Settings, embedded_model_path
from daemon.engine.errors import UnknownModel
from daemon.engine.loading.registry import ModelRegistry
from tests.conftest import start_server, stop_server
from tests.person.conftest import SMALL
from tests.quantize.hub import serve as serve_hub
from tests.service.conftest import assert_error, sse_events

DEFAULT = embedded_model_path().stem

# The `-d` bodies of the seed documents' curl commands, verbatim (/work/shared/seeds).
SEED_000_INFERENCE = (
    '{"model": "togethercomputer/RedPajama-INCITE-7B-Instruct", "prompt": "Q: The capital of '
    'France is?\\nA:", "temperature": 0.8, "top_p": 0.7, "top_k": 50, "max_tokens": 1, '
    '"repetition_penalty": 1}'
)
SEED_003_HELLO = """{
"model": "codellama/CodeLlama-70b-Instruct-hf",
"messages": [
{
"role": "user",
"content": "Hello!"
}
]
}"""
SEED_003_CHEF = """{
"model": "codellama/CodeLlama-70b-Instruct-hf",
"messages": [
{
"role": "system",
"content": "Respond like a michelin starred chef."
},
{
"role": "user",
"content": "Can you name at least two different techniques to cook lamb?"
},
{
"role": "assistant",
"content": "Bonjour! Let me tell you, my friend, cooking lamb is an art form, and I'm more than happy to share with you not two, but three of my favorite techniques to coax out the rich, unctuous flavors and tender textures of this majestic protein. First, we have the classic \\"Sous Vide\\" method. Next, we have the ancient art of \\"Sous le Sable\\". And finally, we have the more modern technique of \\"Hot Smoking.\\""
},
{
"role": "user",
"content": "Tell me more about the second method."
}
]
}"""  # noqa: E501
SEED_003_STREAM = """{
"model": "codellama/CodeLlama-70b-Instruct-hf",
"stream": true,
"messages": [
{
"role": "user",
"content": "Hello!"
}
]
}"""
SEED_001_CHAT = """{
"messages": [
{
"role": "system",
"content": "<string>"
}
],
"model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
"max_tokens": 123,
"stop": [
"<string>"
],
"temperature": 123,
"top_p": 123,
"top_k": 123,
"repetition_penalty": 123,
"stream": true,
"logprobs": 0,
"echo": true,
"n": 64,
"min_p": 123,
"presence_penalty": 123,
"frequency_penalty": 123,
"logit_bias": {
"105": 21.4,
"1024": -10.5
},
"response_format": {
"type": "json",
"schema": {}
},
"tools": [
{
"type": "tool_type",
"function": {
"description": "A description of the function.",
"name": "function_name",
"parameters": {}
}
}
],
"tool_choice": {
"type": "tool_choice_type",
"function": {
"name": "function_name"
}
},
"safety_model": "safety_model_name"
}"""
SEED_002_GENERATE = """{
"request_id": "YmFzZTY0",
"prompt": "[INST] Generate a very long poem about 1000 cats [/INST]\\n\\n",
"only_new_tokens": true,
"stream_response": true,
"generation_config": {
"num_beams": 1,
"do_sample": true,
"temperature": 1,
"top_p": 1,
"top_k": 50,
"max_new_tokens": 2048,
"repetition_penalty": 1,
"length_penalty": 1
}
}"""
# The curl headers, verbatim but for the shell variables they name.
HEADERS_001 = {"Authorization": "<api-key>", "Content-Type": "application/json"}
HEADERS_000 = {"Authorization": "Bearer YOUR_API_KEY", "Content-Type": "application/json"}
HEADERS_003 = {"Content-Type": "application/json", "Authorization": "Bearer $DEEPINFRA_TOKEN"}


@pytest.mark.parametrize("body", [SEED_003_HELLO, SEED_003_CHEF], ids=["hello", "chef"])
def test_seed_003_chat_answers_with_the_one_model(http: httpx.Client, body: str) -> None:
    # The curl's own path (DeepInfra's base URL), host changed; /v1 answers the same.
    r = http.post("/v1/openai/chat/completions", content=body, headers=HEADERS_003)
    assert r.status_code == 200, r.text
    out = r.json()
    # The response says which model answered, not the name that was asked for.
    assert out["model"] == DEFAULT
    assert out["choices"][0]["message"]["content"]
    usage = out["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] <= usage["prompt_tokens"]
    t = out["timings"]
    assert t["prompt_n"] + t["cache_n"] == usage["prompt_tokens"]
    assert t["predicted_n"] == usage["completion_tokens"]
    assert t["prompt_ms"] >= 0 and t["predicted_ms"] >= 0


def test_seed_003_stream_ends_with_timings(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/openai/chat/completions", content=SEED_003_STREAM, headers=HEADERS_003
    ) as r:
        assert r.status_code == 200
        events = list(sse_events(r))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["model"] for c in chunks} == {DEFAULT}
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    assert chunks[-1]["timings"]["predicted_n"] >= 1
    assert all("timings" not in c for c in chunks[:-1])


def test_seed_001_placeholder_body_is_a_400_naming_the_field(http: httpx.Client) -> None:
    """Seed 001's curl is the API reference's placeholder body (temperature 123, top_p 123,
    n 64, tool type "tool_type", safety_model "safety_model_name"): no server accepts those
    values, so the answer is a 400 in OpenAI's shape naming the first field out of range,
    never a 5xx; the same body with real values answers 200 (test_openai covers each field)."""
    r = http.post("/v1/chat/completions", content=SEED_001_CHAT, headers=HEADERS_001)
    err = assert_error(r, 400)
    assert err["param"], err


def test_seed_000_inference_answers(http: httpx.Client) -> None:
    r = http.post("/inference", content=SEED_000_INFERENCE, headers=HEADERS_000)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == DEFAULT


def test_seed_002_payload_on_the_default_context(http: httpx.Client) -> None:
    """Seed 002 (no curl: a fetch payload) asks 2048 new tokens; the default context of 4096
    holds them. The stream starts with 200 and text; the test hangs up after a few chunks (a
    full 2048-token poem is a minute here), and the daemon keeps serving."""
    with http.stream("POST", "/api/generate", content=SEED_002_GENERATE) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/plain")
        text = ""
        for chunk in r.iter_text():
            text += chunk
            if len(text) >= 40:
                break
    assert "edged error" not in text, text
    health = http.get("/health")
    assert health.status_code == 200, health.text


def test_cached_tokens_count_the_reused_prefix(http: httpx.Client) -> None:
    body = {
        "model": DEFAULT,
        "messages": [{"role": "user", "content": "Name three colours of the rainbow. " * 8}],
        "max_tokens": 2,
        "temperature": 0,
    }
    first = http.post("/v1/chat/completions", json=body).json()
    second = http.post("/v1/chat/completions", json=body).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The repeat finds its prompt in a slot's KV (all but the token that must be re-decoded).
    assert cached >= second["usage"]["prompt_tokens"] // 2, (first["usage"], second["usage"])
    assert second["timings"]["cache_n"] == cached


def test_completions_timings_streamed_and_not(http: httpx.Client) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 4, "n": 2, "model": "anything"}
    out = http.post("/v1/completions", json=body).json()
    assert out["model"] == DEFAULT
    assert out["timings"]["predicted_n"] == out["usage"]["completion_tokens"]
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        chunks = [e for e in sse_events(r) if e != "[DONE]"]
    with_timings = [c for c in chunks if "timings" in c]
    assert len(with_timings) == 1 and with_timings[0] is chunks[-1]


def test_retrieve_model(http: httpx.Client) -> None:
    r = http.get(f"/v1/models/{DEFAULT}")
    assert r.status_code == 200
    assert r.json()["id"] == DEFAULT and r.json()["object"] == "model"
    assert_error(http.get("/v1/models/codellama/CodeLlama-70b-Instruct-hf"), 404)


def test_admin_ps_load_unload(http: httpx.Client) -> None:
    ps = http.get("/admin/ps").json()["models"]
    assert [m["name"] for m in ps] == [DEFAULT]
    assert ps[0]["default"] and ps[0]["expires_at"] is None and ps[0]["memory_bytes"] > 0
    assert_error(http.post("/admin/load", json={"model": "nope"}), 404)
    assert_error(http.post("/admin/load", json={"keep_alive": "5m"}), 400)
    r = http.post("/admin/unload", json={"model": DEFAULT})
    assert r.json() == {"model": DEFAULT, "loaded": False, "was_loaded": True}
    assert http.get("/admin/ps").json()["models"] == []
    r = http.post("/admin/load", json={"model": DEFAULT, "keep_alive": "5m"})
    assert r.status_code == 200 and r.json()["loaded"]
    assert [m["name"] for m in http.get("/admin/ps").json()["models"]] == [DEFAULT]


def test_pull_through_the_daemon_ends_zero_config(tmp_path: Path, embed_gguf: Path) -> None:
    """One generation model beside an embedding model: unknown names get it. POST
    /admin/pull streams its progress and adds a second: unknown names are 404 again."""
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(embed_gguf, models / "minilm.gguf")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(embedded_model_path(), repo / "tiny-chat.Q4_1.gguf")
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with serve_hub() as hub:
        hub.add("someone/Tiny-Chat-GGUF", repo)
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        srv = start_server(tmp_path, *SMALL, "--models-dir", str(models), env=env)
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                r = c.post("/v1/chat/completions", json=chat)
                assert r.status_code == 200, r.text
                assert r.json()["model"] == DEFAULT

                with c.stream(
                    "POST", "/admin/pull", json={"model": "someone/Tiny-Chat-GGUF:Q4_1"}
                ) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("application/x-ndjson")
                    lines = [json.loads(line) for line in r.iter_lines() if line]
                assert lines[0]["status"] == "pulling"
                assert lines[-1] == {
                    "status": "success",
                    "model": "Tiny-Chat.Q4_1",
                    "path": str(models / "Tiny-Chat.Q4_1.gguf"),
                }
                assert_error(c.post("/v1/chat/completions", json=chat), 404)
                r = c.post("/v1/chat/completions", json={**chat, "model": "Tiny-Chat.Q4_1"})
                assert r.status_code == 200 and r.json()["model"] == "Tiny-Chat.Q4_1"

                # A quant the repo lacks: the stream ends with an error line, nothing is added.
                with c.stream(
                    "POST", "/admin/pull", json={"model": "someone/Tiny-Chat-GGUF:Q8_0"}
                ) as r:
                    last = [json.loads(line) for line in r.iter_lines() if line][-1]
                assert last["status"] == "error" and "Q8_0" in last["error"]
                assert_error(c.post("/admin/pull", json={"model": "a/b:NOT_A_QUANT"}), 400)

                # The file goes away; a rescan makes the one model answer unknown names again.
                c.post("/admin/unload", json={"model": "Tiny-Chat.Q4_1"})
                (models / "Tiny-Chat.Q4_1.gguf").unlink()
                assert "Tiny-Chat.Q4_1" not in c.post("/admin/rescan").json()["models"]
                assert c.post("/v1/chat/completions", json=chat).json()["model"] == DEFAULT
        finally:
            stop_server(srv)


def test_strict_model_names_flag() -> None:
    args = _parser().parse_args(["serve", "--strict-model-names", "--keep-alive", "5m"])
    settings = settings_from_args(args)
    assert settings.strict_model_names and settings.keep_alive == 300.0
    reg = ModelRegistry(embedded_model_path(), engine_options(settings), strict_names=True)
    with pytest.raises(UnknownModel):
        reg.resolve("codellama/CodeLlama-70b-Instruct-hf")
    loose = ModelRegistry(embedded_model_path(), engine_options(Settings()))
    assert loose.resolve("codellama/CodeLlama-70b-Instruct-hf").name == DEFAULT


@pytest.mark.parametrize(
    ("flag", "value", "seconds"),
    [
        ("--keep-alive", "5m", 300.0),
        ("--request-timeout", "1h", 3600.0),
        ("--drain-timeout", "90", 90.0),
    ],
)
def test_duration_flags(flag: str, value: str, seconds: float) -> None:
    settings = settings_from_args(_parser().parse_args(["serve", flag, value]))
    assert getattr(settings, flag[2:].replace("-", "_")) == seconds


def test_duration_flag_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--keep-alive", "soon"])
    assert "duration like" in capsys.readouterr().err


def test_duration_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_KEEP_ALIVE", "2m")
    assert Settings().keep_alive == 120.0


@pytest.fixture(scope="module")
def embed_gguf(minilm_gguf: Callable[[str], Path]) -> Path:
    """MiniLM (an embedding model) as GGUF (the run's shared conversion; tests link to it)."""
    return minilm_gguf("f16")


def test_seed_bodies_are_the_documents_json() -> None:
    """Guard against a typo in the copies: each is valid JSON naming the seed's model."""
    assert json.loads(SEED_000_INFERENCE)["model"].startswith("togethercomputer/")
    for body in (SEED_003_HELLO, SEED_003_CHEF, SEED_003_STREAM):
        assert json.loads(body)["model"] == "codellama/CodeLlama-70b-Instruct-hf"


def test_an_unknown_safety_model_is_never_zero_config(http: httpx.Client) -> None:
    """The lone model answers any `model` name, but never moderates under a name nobody
    chose: an unknown `safety_model` is a 404 naming the field (the real name still works)."""
    msgs = [{"role": "user", "content": "hi"}]
    r = http.post(
        "/v1/chat/completions",
        json={"messages": msgs, "max_tokens": 1, "safety_model": "meta-llama/Llama-Guard-3-8B"},
    )
    err = assert_error(r, 404, "model_not_found")
    assert err["param"] == "safety_model"
    r = http.post(
        "/v1/chat/completions", json={"messages": msgs, "max_tokens": 1, "safety_model": DEFAULT}
    )
    assert r.status_code == 200, r.text
