"""Ollama's API over real HTTP with the official `ollama` client (and httpx for raw shapes)."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import httpx
import jsonschema
import ollama
import pytest

from daemon.config import embedded_model_path
from tests.conftest import Server, place_copy, start_server, stop_server
from tests.quantize.hub import FakeHub, serve

DEFAULT = embedded_model_path().stem
EMBED = "minilm"
REPO = "someone/SmolPulled-GGUF"
PULLED = "SmolPulled.Q4_1"
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A local hub stand-in serving the embedded SmolLM2 as a GGUF repository."""
    src = tmp_path_factory.mktemp("hub_repo")
    shutil.copyfile(embedded_model_path(), src / "smolpulled.Q4_1.gguf")
    with serve() as h:
        h.add(REPO, src)
        yield h


@pytest.fixture(scope="module")
def models_dir(
    minilm_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("ollama_models")
    place_copy(minilm_gguf("f16"), out / f"{EMBED}.gguf")
    return out


@pytest.fixture(scope="module")
def osrv(
    hub: FakeHub, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ollama_server")
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    srv = start_server(
        tmp,
        "--models-dir",
        str(models_dir),
        "--parallel",
        "4",
        "--ctx-size",
        "1024",
        "--strict-model-names",  # the error tests check 404s of unknown names
        env=env,
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(osrv: Server) -> ollama.Client:
    return ollama.Client(host=osrv.url)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- chat ---------------------------------------------------------------------------------


def test_chat_whole_and_streamed_agree(client: ollama.Client) -> None:
    msgs = _user("Name three colours.")
    whole = client.chat(model=DEFAULT, messages=msgs, options=GREEDY, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count is not None and 0 < whole.eval_count <= 12
    assert whole.prompt_eval_count and whole.prompt_eval_count > 5
    assert whole.total_duration and whole.total_duration >= (whole.eval_duration or 0)
    parts = list(client.chat(model=DEFAULT, messages=msgs, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason == whole.done_reason
    assert parts[-1].eval_count == whole.eval_count
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


def test_chat_format_schema_is_enforced(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["city", "year"],
    }
    r = client.chat(
        model=DEFAULT,
        messages=_user("Where and when were the first modern Olympics?"),
        format=schema,
        options={"temperature": 0, "num_predict": 60},
    )
    jsonschema.validate(json.loads(r.message.content or ""), schema)
    r = client.chat(
        model=DEFAULT, messages=_user("Give a JSON object."), format="json", options=GREEDY
    )
    assert r.message.content.lstrip().startswith("{")


def test_chat_stop_and_latest_tag(client: ollama.Client) -> None:
    r = client.chat(
        model=f"{DEFAULT}:latest",
        messages=_user("Count from 1 to 10 separated by commas."),
        options={"temperature": 0, "num_predict": 40, "stop": ["4"]},
    )
    assert "4" not in r.message.content and r.done_reason == "stop"
    assert r.model == f"{DEFAULT}:latest"


def test_chat_tool_round_trip(client: ollama.Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    msgs = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"celsius": 21}', "tool_name": "get_weather"},
    ]
    r = client.chat(model=DEFAULT, messages=msgs, tools=[tool], options=GREEDY)
    assert r.done and (r.message.content or r.message.tool_calls)
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)


# ---- generate -----------------------------------------------------------------------------


def test_generate_with_context_and_stream(client: ollama.Client) -> None:
    r = client.generate(model=DEFAULT, prompt="Say hello.", options=GREEDY)
    assert r.done and r.response and r.context
    again = client.generate(model=DEFAULT, prompt="Say hello.", options=GREEDY, stream=True)
    parts = list(again)
    assert "".join(p.response for p in parts) == r.response
    assert parts[-1].context == r.context
    follow = client.generate(
        model=DEFAULT, prompt="And goodbye?", context=r.context, options=GREEDY
    )
    assert follow.prompt_eval_count and follow.prompt_eval_count > len(r.context)
    assert follow.context[: len(r.context)] == r.context


def test_generate_raw_and_system(client: ollama.Client) -> None:
    raw = client.generate(
        model=DEFAULT, prompt="The capital of France is", raw=True, options=GREEDY
    )
    assert raw.prompt_eval_count is not None and raw.prompt_eval_count < 10
    sys = client.generate(model=DEFAULT, prompt="Hi", system="You are a pirate.", options=GREEDY)
    assert sys.prompt_eval_count and sys.prompt_eval_count > raw.prompt_eval_count


def test_seed_and_ollama_generate_share_one_port(osrv: Server) -> None:
    seed = httpx.post(
        f"{osrv.url}/api/generate",
        json={
            "request_id": "h12b-one-port",
            "prompt": "Once upon a time",
            "stream_response": False,
            "generation_config": {"max_new_tokens": 4, "do_sample": False},
        },
        timeout=60,
    )
    assert seed.status_code == 200 and seed.headers["content-type"].startswith("text/plain")
    assert seed.text
    more = httpx.post(
        f"{osrv.url}/api/generate",
        json={
            "request_id": "h12b-one-port",
            "stream_response": False,
            "generation_config": {"max_new_tokens": 4, "do_sample": False},
        },
        timeout=60,
    )
    assert more.status_code == 200 and more.text
    ol = httpx.post(
        f"{osrv.url}/api/generate",
        json={"prompt": "Once upon a time", "stream": False, "options": {"num_predict": 4}},
        timeout=60,
    )
    assert ol.status_code == 200 and ol.headers["content-type"].startswith("application/json")
    assert ol.json()["done"] is True and isinstance(ol.json()["response"], str)
    streamed = httpx.post(
        f"{osrv.url}/api/generate",
        json={"prompt": "Once upon a time", "options": {"num_predict": 4}},
        timeout=60,
    )
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in streamed.text.splitlines()]
    assert lines[-1]["done"] is True and "eval_count" in lines[-1]
    # Seed-only fields without request_id: the seed's own 400 (OpenAI error shape).
    bad_seed = httpx.post(
        f"{osrv.url}/api/generate", json={"prompt": "x", "stream_response": False}, timeout=30
    )
    assert bad_seed.status_code == 400 and "request_id" in bad_seed.json()["error"]["message"]


# ---- embeddings ---------------------------------------------------------------------------


def test_embed_matches_openai_embeddings(client: ollama.Client, osrv: Server) -> None:
    r = client.embed(model=EMBED, input=["a cat", "a dog"])
    assert len(r.embeddings) == 2 and all(len(v) == 384 for v in r.embeddings)
    assert all(abs(math.hypot(*v) - 1) < 1e-3 for v in r.embeddings)
    assert r.prompt_eval_count and r.prompt_eval_count >= 4
    oa = httpx.post(
        f"{osrv.url}/v1/embeddings", json={"model": EMBED, "input": ["a cat"]}, timeout=30
    ).json()
    assert oa["data"][0]["embedding"] == pytest.approx(r.embeddings[0], abs=1e-6)
    one = client.embed(model=EMBED, input="a cat", dimensions=64)
    assert len(one.embeddings[0]) == 64
    legacy = client.embeddings(model=EMBED, prompt="a cat")
    assert list(legacy.embedding) == pytest.approx(r.embeddings[0], abs=1e-6)


# ---- models -------------------------------------------------------------------------------


def test_list_show_ps(client: ollama.Client, osrv: Server) -> None:
    names = {m.model for m in client.list().models}
    assert {DEFAULT, EMBED} <= names
    info = client.show(DEFAULT)
    assert "completion" in (info.capabilities or [])
    assert info.details and info.details.family == "llama" and info.details.format == "gguf"
    assert info.template and "im_start" in info.template
    assert info.modelinfo and info.modelinfo["llama.context_length"] > 0
    assert info.details.quantization_level == "Q4_1" and info.details.parameter_size == "135M"
    # The vocabulary and merges only when verbose, as gguf-py reads them from the file.
    assert "tokenizer.ggml.tokens" not in info.modelinfo
    verbose = httpx.post(f"{osrv.url}/api/show", json={"model": DEFAULT, "verbose": True})
    full = verbose.json()["model_info"]
    reader = gguf.GGUFReader(embedded_model_path())
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert full[key] == reader.fields[key].contents(), key
    assert {k: v for k, v in full.items() if k in info.modelinfo} == info.modelinfo
    assert client.show(EMBED).capabilities == ["embedding"]
    client.chat(model=DEFAULT, messages=_user("hi"), options={"num_predict": 1})
    loaded = {m.model: m for m in client.ps().models}
    assert DEFAULT in loaded and loaded[DEFAULT].context_length == 1024
    assert loaded[DEFAULT].size and loaded[DEFAULT].size > 0


def test_pull_copy_delete_and_keep_alive(
    client: ollama.Client, osrv: Server, models_dir: Path
) -> None:
    events = list(client.pull(f"hf.co/{REPO}:Q4_1", stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    sized = [e for e in events if e.total]
    assert (
        sized
        and sized[-1].completed == sized[-1].total == (models_dir / f"{PULLED}.gguf").stat().st_size
    )
    assert sized[-1].digest and sized[-1].digest.startswith("sha256:")
    assert PULLED in {m.model for m in client.list().models}
    # An empty prompt loads the model; keep_alive 0 unloads it.
    loaded = client.generate(model=PULLED, prompt="")
    assert loaded.done_reason == "load" and PULLED in {m.model for m in client.ps().models}
    # Under another request's lease keep_alive 0 waits: the stream ends whole, then it goes.
    stream = client.generate(
        model=PULLED, prompt="1, 2, 3, 4, 5, 6,", stream=True, options={**GREEDY, "num_predict": 64}
    )
    first = next(stream)
    gone = client.generate(model=PULLED, prompt="", keep_alive=0)
    assert gone.done_reason == "unload"
    rest = [first, *stream]
    assert rest[-1].done and rest[-1].done_reason == "length" and rest[-1].eval_count == 64
    deadline = time.monotonic() + 30
    while PULLED in {m.model for m in client.ps().models}:  # the reaper unloads it once idle
        assert time.monotonic() < deadline
        time.sleep(0.2)
    gone = client.generate(model=PULLED, prompt="", keep_alive=0)  # idle: unloaded at once
    assert gone.done_reason == "unload" and PULLED not in {m.model for m in client.ps().models}
    # Not the default model: a client's keep_alive 0 never takes /health down.
    kept = client.chat(model=DEFAULT, messages=[], keep_alive=0)
    assert kept.done_reason == "load" and DEFAULT in {m.model for m in client.ps().models}
    assert httpx.get(f"{osrv.url}/health").status_code == 200
    client.copy(PULLED, "smol-copy")
    r = client.generate(model="smol-copy", prompt="Hello", options=GREEDY)
    assert r.done
    with pytest.raises(ollama.ResponseError) as exc:
        client.copy(PULLED, "smol-copy")
    assert exc.value.status_code == 409  # an existing name is never overwritten
    assert client.delete("smol-copy").status == "success"
    assert client.delete(PULLED).status == "success"
    assert not (models_dir / f"{PULLED}.gguf").exists()
    assert {"smol-copy", PULLED}.isdisjoint(m.model for m in client.list().models)
    with pytest.raises(ollama.ResponseError) as exc:
        client.delete(PULLED)
    assert exc.value.status_code == 404


def test_version(osrv: Server) -> None:
    body = httpx.get(f"{osrv.url}/api/version").json()
    assert body["version"].count(".") == 2


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/chat", {"model": "nope", "messages": _user("x")}, 404, "not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "not found"),
        ("/api/chat", {"messages": _user("x"), "options": {"temperature": 5}}, 400, "temperature"),
        ("/api/chat", {"messages": _user("x"), "options": {"mirostat": 2}}, 400, "mirostat"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            400,
            "not a PNG",
        ),
        ("/api/generate", {"prompt": "x", "images": ["aGk="]}, 400, "not a PNG"),
        ("/api/generate", {"prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
        ("/api/generate", {"prompt": "x", "raw": True, "system": "s"}, 400, "raw"),
        ("/api/generate", {"prompt": "x", "think": True}, 400, "thinking"),
        ("/api/generate", {"prompt": "x", "context": [-1]}, 400, "token"),
        ("/api/generate", {"prompt": "x" * 400, "options": {"num_ctx": 16}}, 400, "context"),
        (
            "/api/chat",
            {"messages": _user("x"), "format": {"type": "integer", "minimum": 3}},
            400,
            "minimum",
        ),
        ("/api/chat", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ("/api/embed", {"model": DEFAULT, "input": "x"}, 400, "embedding"),
        ("/api/embed", {"model": EMBED, "input": ["x", ""]}, 400, "empty"),
        (
            "/api/generate",
            {"model": EMBED, "prompt": "x", "suffix": "y"},
            400,
            "fill-in-the-middle",
        ),
        ("/api/show", {"model": "nope"}, 404, "not found"),
        ("/api/show", {}, 400, "model"),
        ("/api/copy", {"source": "nope", "destination": "y"}, 404, "not found"),
        ("/api/copy", {"source": DEFAULT, "destination": "../etc"}, 400, "destination"),
        ("/api/pull", {"model": "no-slash"}, 400, "repository"),
        ("/api/pull", {"model": "someone/missing:Q4_1", "stream": False}, 404, "pull failed"),
    ],
)
def test_errors_in_ollama_shape(
    osrv: Server, path: str, body: dict[str, object], status: int, needle: str
) -> None:
    r = httpx.post(f"{osrv.url}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error"} and isinstance(err["error"], str)
    assert needle.lower() in err["error"].lower()


def test_error_shapes_of_the_rest(osrv: Server, client: ollama.Client) -> None:
    bad = httpx.post(
        f"{osrv.url}/api/generate",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    r = httpx.request("DELETE", f"{osrv.url}/api/delete", json={"model": DEFAULT})
    assert r.status_code == 400 and "default" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="nope", messages=_user("x"))
    assert exc.value.status_code == 404 and "not found" in exc.value.error
    # A failure after the stream began arrives as a final {"error"} line.
    r = httpx.post(f"{osrv.url}/api/pull", json={"model": "someone/missing:Q4_1"}, timeout=60)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert r.status_code == 200 and set(lines[-1]) == {"error"}


def test_infill_needs_fim_tokens(osrv: Server) -> None:
    """A vocabulary without FIM tokens (MiniLM's) is a 400 in llama-server's shape."""
    r = httpx.post(
        f"{osrv.url}/infill", json={"model": EMBED, "input_prefix": "a", "input_suffix": "b"}
    )
    assert r.status_code == 400
    assert "fill-in-the-middle" in r.json()["error"]["message"] and r.json()["error"]["code"] == 400
