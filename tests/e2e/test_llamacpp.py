"""llama-server's own routes over real HTTP, checked against what its README promises."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from daemon.config import embedded_model_path
from tests.conftest import Server, start_server, stop_server
from tests.e2e.fim_model import write_fim_copy

FIM = "smollm-fim"
GREEDY: dict[str, Any] = {"temperature": 0, "n_predict": 8}
COUNT = "Count from 1 to 20: 1, 2, 3,"
MODEL = embedded_model_path().stem


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model plus a copy of it whose GGUF declares FIM tokens."""
    models = tmp_path_factory.mktemp("llamacpp_models")
    write_fim_copy(embedded_model_path(), models / f"{FIM}.gguf")
    tmp = tmp_path_factory.mktemp("llamacpp_server")
    srv = start_server(tmp, "--models-dir", str(models), "--parallel", "4", "--ctx-size", "2048")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def base_url(llama_server: Server) -> str:
    return llama_server.url


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=600)  # generous: shared CI cores


def _events(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [x for x in r.text.splitlines() if x.startswith("data:")]
    assert lines and all(x != "data: [DONE]" for x in lines)  # llama-server sends no [DONE]
    return [json.loads(x[5:]) for x in lines]


def test_completion_fields(base_url: str) -> None:
    r = _post(base_url, "/completion", {"prompt": COUNT, "return_tokens": True, **GREEDY})
    assert r.status_code == 200, r.text
    b = r.json()
    assert isinstance(b["content"], str) and b["stop"] is True
    assert b["tokens_predicted"] == len(b["tokens"]) == 8 and b["stop_type"] == "limit"
    assert b["tokens_evaluated"] > 5 and b["generation_settings"]["n_predict"] == 8
    t = b["timings"]
    assert t["predicted_n"] == 8 and t["prompt_n"] + t["cache_n"] == b["tokens_evaluated"]
    assert "completion_probabilities" not in b


def test_token_mixed_and_text_prompts_agree(base_url: str) -> None:
    text = _post(base_url, "/completion", {"prompt": COUNT, **GREEDY}).json()
    ids = _post(base_url, "/tokenize", {"content": COUNT, "add_special": True}).json()["tokens"]
    by_ids = _post(base_url, "/completion", {"prompt": ids, **GREEDY}).json()
    assert by_ids["content"] == text["content"]
    head = _post(base_url, "/tokenize", {"content": "Count from 1 to 20:"}).json()["tokens"]
    mixed = _post(base_url, "/completion", {"prompt": [*head, " 1, 2, 3,"], **GREEDY}).json()
    assert mixed["tokens_evaluated"] > len(head) and isinstance(mixed["content"], str)


def test_stream_is_sse_without_done(base_url: str) -> None:
    whole = _post(base_url, "/completion", {"prompt": COUNT, **GREEDY}).json()
    events = _events(_post(base_url, "/completion", {"prompt": COUNT, "stream": True, **GREEDY}))
    assert all(e["stop"] is False for e in events[:-1]) and events[-1]["stop"] is True
    assert "".join(e["content"] for e in events) == whole["content"]
    assert events[-1]["timings"]["predicted_n"] == 8


def test_n_probs(base_url: str) -> None:
    b = _post(base_url, "/completion", {"prompt": COUNT, "n_probs": 3, **GREEDY}).json()
    probs = b["completion_probabilities"]
    assert len(probs) == b["tokens_predicted"]
    for p in probs:
        assert len(p["top_logprobs"]) == 3 and p["logprob"] <= 0
        assert p["top_logprobs"][0]["logprob"] >= p["top_logprobs"][-1]["logprob"]
        # Greedy: the chosen token is the most likely one.
        assert p["id"] == p["top_logprobs"][0]["id"]
    events = _events(
        _post(base_url, "/completion", {"prompt": COUNT, "n_probs": 2, "stream": True, **GREEDY})
    )
    assert sum(len(e.get("completion_probabilities", [])) for e in events) == 8


def test_stop_word_and_eos(base_url: str) -> None:
    b = _post(
        base_url,
        "/completion",
        {"prompt": COUNT, "temperature": 0, "n_predict": 16, "stop": [" 6"]},
    ).json()
    assert b["stop_type"] == "word" and b["stopping_word"] == " 6" and " 6" not in b["content"]
    tpl = _post(
        base_url, "/apply-template", {"messages": [{"role": "user", "content": "Say hi."}]}
    ).json()["prompt"]
    eos = _post(base_url, "/completion", {"prompt": tpl, "temperature": 0, "n_predict": 60}).json()
    assert eos["stop_type"] == "eos"
    ignored = _post(
        base_url,
        "/completion",
        {
            "prompt": tpl,
            "temperature": 0,
            "n_predict": eos["tokens_predicted"] + 3,
            "ignore_eos": True,
        },
    ).json()
    assert ignored["stop_type"] == "limit"


def test_json_schema_and_grammar(base_url: str) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    b = _post(
        base_url,
        "/completion",
        {"prompt": "A JSON object:", "json_schema": schema, "temperature": 0, "n_predict": 40},
    ).json()
    jsonschema.validate(json.loads(b["content"]), schema)
    g = _post(
        base_url,
        "/completion",
        {"prompt": "Yes or no?", "grammar": 'root ::= "yes" | "no"', "n_predict": 5},
    ).json()
    assert g["content"] in ("yes", "no")


def test_several_prompts(base_url: str) -> None:
    b = _post(base_url, "/completion", {"prompt": ["Hello", "Goodbye"], **GREEDY}).json()
    assert isinstance(b, list) and [x["index"] for x in b] == [0, 1]


def test_infill_lays_out_fim_tokens(base_url: str) -> None:
    body = {
        "model": FIM,
        "input_prefix": "def add(a, b):\n    return ",
        "input_suffix": "\n\nprint(add(1, 2))\n",
        "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
        "return_tokens": True,
        **GREEDY,
    }
    r = _post(base_url, "/infill", body)
    assert r.status_code == 200, r.text
    b = r.json()
    assert isinstance(b["content"], str) and b["tokens_predicted"] <= 8

    def ids(text: str) -> list[int]:
        return _post(base_url, "/tokenize", {"content": text, "parse_special": False}).json()[
            "tokens"
        ]

    # [REP]myproject\n [SEP]util.py\n text [SEP]filename\n [PRE]prefix [SUF]suffix [MID]
    expected = [
        4, *ids("myproject\n"),
        5, *ids("util.py\n"), *ids(body["input_extra"][0]["text"]),
        5, *ids("filename\n"),
        7, *ids(body["input_prefix"]), 8, *ids(body["input_suffix"]), 9,
    ]  # fmt: skip
    detok = _post(base_url, "/detokenize", {"tokens": expected}).json()["content"]
    assert b["prompt"] == detok and b["tokens_evaluated"] == len(expected)
    without = _post(base_url, "/infill", {**body, "input_extra": []}).json()
    assert without["tokens_evaluated"] < b["tokens_evaluated"]
    streamed = _events(_post(base_url, "/infill", {**body, "stream": True}))
    assert "".join(e["content"] for e in streamed) == b["content"]
    # Special-token text in client input stays text.
    sneaky = _post(base_url, "/infill", {**body, "input_prefix": "<issue_comment>"}).json()
    assert sneaky["tokens_evaluated"] > b["tokens_evaluated"] - len(ids(body["input_prefix"]))


def test_infill_without_fim_tokens_and_ollama_suffix(base_url: str) -> None:
    r = _post(base_url, "/infill", {"input_prefix": "a", "input_suffix": "b"})
    assert r.status_code == 400 and "fill-in-the-middle" in r.json()["error"]["message"]
    ol = _post(
        base_url,
        "/api/generate",
        {
            "model": FIM,
            "prompt": "def f(",
            "suffix": "):\n",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 4},
        },
    )
    assert ol.status_code == 200 and ol.json()["done"] is True
    infill = _post(
        base_url,
        "/infill",
        {
            "model": FIM,
            "input_prefix": "def f(",
            "input_suffix": "):\n",
            "temperature": 0,
            "n_predict": 4,
            "repeat_penalty": 1.1,
            "top_k": 40,
            "top_p": 0.9,
            "min_p": 0,
        },
    ).json()
    assert ol.json()["prompt_eval_count"] == infill["tokens_evaluated"]


def test_props_template_tokenize_slots(base_url: str) -> None:
    props = httpx.get(f"{base_url}/props").json()
    assert props["total_slots"] == 4 and props["default_generation_settings"]["n_ctx"] == 2048
    assert "im_start" in props["chat_template"] and props["modalities"]["vision"] is False
    out = _post(
        base_url,
        "/apply-template",
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
    ).json()
    assert "<|im_start|>user\nU<|im_end|>" in out["prompt"]
    assert out["prompt"].endswith("<|im_start|>assistant\n")
    text = "Hello wörld <|im_end|>"
    plain = _post(base_url, "/tokenize", {"content": text}).json()["tokens"]
    pieces = _post(base_url, "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == plain
    joined = b"".join(
        p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces
    )
    assert joined.decode() == text
    back = _post(base_url, "/detokenize", {"tokens": plain}).json()["content"]
    assert back == text
    slots = httpx.get(f"{base_url}/slots").json()
    assert [s["id"] for s in slots] == list(range(4))
    assert all(isinstance(s["is_processing"], bool) for s in slots)


def test_openai_routes_without_v1(base_url: str) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    a = _post(base_url, "/chat/completions", {"messages": msgs, "max_tokens": 4, "temperature": 0})
    b = _post(
        base_url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 4, "temperature": 0}
    )
    assert (
        a.status_code == 200
        and a.json()["choices"][0]["message"] == b.json()["choices"][0]["message"]
    )
    c = _post(base_url, "/completions", {"prompt": "Hi", "max_tokens": 2})
    assert c.status_code == 200 and c.json()["object"] == "text_completion"
    assert httpx.get(f"{base_url}/models").json() == httpx.get(f"{base_url}/v1/models").json()
    e = _post(base_url, "/embeddings", {"input": "x"})
    assert e.status_code == 400 and e.json()["error"]["code"] == "model_not_supported"


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/completion", {"prompt": "x", "n_probs": 50}, 400, "n_probs"),
        ("/completion", {"prompt": "x", "mirostat": 2}, 400, "mirostat"),
        ("/completion", {"prompt": "x", "post_sampling_probs": 1.5}, 400, "post_sampling_probs"),
        ("/completion", {"prompt": "x", "lora": [{"id": 0, "scale": 1}]}, 400, "lora"),
        ("/completion", {"prompt": "x", "grammar": "root ::= x", "json_schema": {}}, 400, "either"),
        ("/completion", {"prompt": "x", "grammar": "nonsense"}, 400, "grammar"),
        ("/completion", {"prompt": [10**9]}, 400, "token"),
        ("/completion", {"prompt": ""}, 400, "empty"),
        ("/completion", {"prompt": "x", "model": "nope"}, 404, "nope"),
        ("/completion", {"prompt": "x", "logit_bias": [["", 1]]}, 400, "logit_bias"),
        ("/completion", {"prompt": "x", "logit_bias": {"x" * 300: 1}}, 400, "logit_bias"),
        ("/completion", {"prompt": "x " * 3000}, 400, "context"),
        ("/completion", {"n_predict": 3}, 400, "prompt"),
        ("/infill", {"input_prefix": "x", "temperature": -1}, 400, "temperature"),
        ("/apply-template", {"messages": []}, 400, "messages"),
    ],
)
def test_errors_in_llama_server_shape(
    base_url: str, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    r = _post(base_url, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["type"], str)
    assert needle.lower() in err["message"].lower()


def test_return_progress_and_timings_per_token(base_url: str) -> None:
    """llama-server's streamed telemetry: `prompt_progress` when the prompt takes its slot
    (processed == cache) and after each chunk of it, monotone to processed == total before
    the first token; `timings` on every event; the text is the same as without them."""
    words = " ".join(f"w{i}" for i in range(200))  # ~660 tokens: two 512-token batches
    body = {"prompt": f"Progress test {words}. Then:", "stream": True, **GREEDY}
    asked = {**body, "return_progress": True, "timings_per_token": True}

    def reports(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert all("timings" in e for e in events)
        got = [e["prompt_progress"] for e in events if "prompt_progress" in e]
        start, end = got[0], got[-1]
        assert start["processed"] == start["cache"] and end["processed"] == end["total"]
        assert all(r["total"] == end["total"] and r["cache"] == start["cache"] for r in got)
        assert [r["processed"] for r in got] == sorted({r["processed"] for r in got})
        at = next(i for i, e in enumerate(events) if e["content"])
        assert all("prompt_progress" not in e for e in events[at + 1 :])
        return got

    cold = reports(_events(_post(base_url, "/completion", asked)))
    assert cold[0]["cache"] < 50 and len(cold) >= 3  # the first report, then two chunks
    # Now the prompt is in a slot: a plain stream and a reporting one find the same prefix.
    plain = _events(_post(base_url, "/completion", body))
    assert all("prompt_progress" not in e and "timings" not in e for e in plain[:-1])
    events = _events(_post(base_url, "/completion", asked))
    warm = reports(events)
    assert warm[0]["cache"] > warm[0]["total"] - 10 and len(warm) <= 2
    assert "".join(e["content"] for e in events) == "".join(e["content"] for e in plain)


def test_openai_streams_report_progress_through_the_sdk(base_url: str) -> None:
    """llama-server's extension on its OpenAI routes, as its web UI asks for it: chat and
    text completion chunks with `prompt_progress` (extra fields the SDK keeps), `timings` on
    each chunk with `timings_per_token`; neither changes the text."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    words = " ".join(f"v{i}" for i in range(200))  # two batches
    extra = {"return_progress": True, "timings_per_token": True}
    ask: dict[str, Any] = {"max_tokens": 6, "temperature": 0}
    msgs: list[Any] = [{"role": "user", "content": f"Chat progress {words}"}]
    for kind in ("chat", "text"):
        if kind == "chat":
            stream = client.chat.completions.create(
                model=MODEL, messages=msgs, stream=True, extra_body=extra, **ask
            )
        else:
            stream = client.completions.create(
                model=MODEL, prompt=f"Text progress {words}", stream=True, extra_body=extra, **ask
            )
        chunks = list(stream)
        extras = [c.model_extra or {} for c in chunks]
        reports = [x["prompt_progress"] for x in extras if "prompt_progress" in x]
        assert len(reports) >= 3 and reports[0]["processed"] == reports[0]["cache"]
        assert reports[-1]["processed"] == reports[-1]["total"] > 200
        assert all("timings" in x for x in extras)


def test_responses_stream_with_llama_telemetry(base_url: str) -> None:
    """llama-server's Responses telemetry: response.in_progress events carrying
    `prompt_progress`, `timings` on every event (the deltas and response.completed too)."""
    words = " ".join(f"r{i}" for i in range(200))
    body = {
        "model": MODEL,
        "input": f"Responses progress {words}",
        "max_output_tokens": 6,
        "temperature": 0,
        "stream": True,
        "timings_per_token": True,
        "return_progress": True,
    }
    r = _post(base_url, "/responses", body)
    assert r.status_code == 200, r.text
    events = [json.loads(x[5:]) for x in r.text.splitlines() if x.startswith("data:")]
    assert all("timings" in e for e in events)
    progress = [e for e in events if "prompt_progress" in e]
    assert len(progress) >= 3 and all(e["type"] == "response.in_progress" for e in progress)
    last = progress[-1]["prompt_progress"]
    assert last["processed"] == last["total"] > 200
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")  # max_output_tokens
    assert kinds.index("response.output_text.delta") > kinds.index("response.in_progress")


def test_progress_with_two_choices(base_url: str) -> None:
    """n = 2: the prompt goes in once (the second choice takes a copy of its KV), so one
    choice reports its progress; both answer, as they do without the telemetry."""
    words = " ".join(f"n{i}" for i in range(200))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Two choices {words}"}],
        "max_tokens": 4,
        "temperature": 0,
        "n": 2,
        "stream": True,
        "return_progress": True,
    }
    r = _post(base_url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    lines = [x[5:].strip() for x in r.text.splitlines() if x.startswith("data:")]
    events = [json.loads(x) for x in lines if x != "[DONE]"]
    reports = [e for e in events if "prompt_progress" in e]
    assert reports and {e["choices"][0]["index"] for e in reports} == {0}
    assert reports[-1]["prompt_progress"]["processed"] == reports[-1]["prompt_progress"]["total"]
    ended = {c["index"] for e in events for c in e["choices"] if c["finish_reason"]}
    assert ended == {0, 1}


def test_logit_bias_keyed_by_text(base_url: str) -> None:
    """llama-server's text keys: `[[" the ", -100]]` (or `{" the ": -100}`) biases every token
    the text tokenizes to, exactly as the same biases given by token id do."""
    words = ["the", "The", "a", "is", "book", "Book", "I", "and", "to", "of"]
    body = {"prompt": "What is the best book", "temperature": 0, "n_predict": 32}
    plain = _post(base_url, "/completion", body).json()["content"]
    tokens = _post(
        base_url, "/tokenize", {"content": " " + " ".join(words) + " ", "add_special": False}
    ).json()["tokens"]
    forms = [
        [[" " + w + " ", -100] for w in words],
        {" " + w + " ": -100 for w in words},
        [[t, -100] for t in tokens],
        {str(t): False for t in tokens},
    ]
    texts = []
    for bias in forms:
        r = _post(base_url, "/completion", {**body, "logit_bias": bias})
        assert r.status_code == 200, r.text
        texts.append(r.json()["content"])
    assert texts == [texts[0]] * len(forms) and texts[0] != plain
    assert all(f" {w} " not in texts[0] for w in words)


def _probs(base_url: str, **body: Any) -> list[dict[str, Any]]:
    r = _post(base_url, "/completion", {"prompt": "Today I would finally become a", **body})
    assert r.status_code == 200, r.text
    return list(r.json()["completion_probabilities"])


def test_post_sampling_probs(base_url: str) -> None:
    """llama-server's `post_sampling_probs`: each token's probability among the candidates
    the sampler kept, and the likeliest of them. Sampling itself is unchanged by asking (same
    seed, same tokens); with no filter and temperature 1 the kept distribution is the raw
    one, so the probabilities are exp of the plain log-probabilities; with top_k 3 at most
    three candidates remain and they sum to 1."""
    sampled = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 5}
    raw = _probs(base_url, n_predict=6, n_probs=5, **sampled)
    post = _probs(base_url, n_predict=6, n_probs=5, post_sampling_probs=True, **sampled)
    assert [t["id"] for t in post] == [t["id"] for t in raw]
    for r, p in zip(raw, post, strict=True):
        assert set(p) == {"id", "token", "prob", "bytes", "top_probs"}
        assert p["prob"] == pytest.approx(math.exp(r["logprob"]), rel=1e-3, abs=1e-6)
        assert [a["id"] for a in p["top_probs"]] == [a["id"] for a in r["top_logprobs"]]
        for a, b in zip(p["top_probs"], r["top_logprobs"], strict=True):
            assert a["prob"] == pytest.approx(math.exp(b["logprob"]), rel=1e-3, abs=1e-6)

    for tok in _probs(
        base_url, n_predict=6, n_probs=10, post_sampling_probs=True, **{**sampled, "top_k": 3}
    ):
        probs = [a["prob"] for a in tok["top_probs"]]
        assert 1 <= len(probs) <= 3 and all(0 < p <= 1 for p in probs)
        assert sum(probs) == pytest.approx(1.0) and probs == sorted(probs, reverse=True)
        assert tok["prob"] in probs  # the chosen token is among what was kept

    greedy = _probs(base_url, n_predict=4, n_probs=3, post_sampling_probs=True, temperature=0)
    for tok in greedy:
        assert tok["id"] == tok["top_probs"][0]["id"] and tok["prob"] == tok["top_probs"][0]["prob"]


def test_post_sampling_probs_streamed(base_url: str) -> None:
    body = {
        "prompt": "Today I would finally become a",
        "n_predict": 5,
        "n_probs": 2,
        "post_sampling_probs": True,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{base_url}/completion", json=body, timeout=120) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    seen = [p for e in events for p in e.get("completion_probabilities", [])]
    assert seen and all("prob" in p and "logprob" not in p for p in seen)
    plain = _probs(base_url, **{k: v for k, v in body.items() if k != "stream"})
    assert [p["id"] for p in seen] == [p["id"] for p in plain]
