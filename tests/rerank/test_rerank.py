"""/v1/rerank scores equal a numpy forward pass of the same checkpoint; bad input is a 400."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server
from tests.e2e.test_errors import assert_error
from tests.quantize.cross_encoder import cross_encoder_score
from tests.quantize.llm import load

URL = "/v1/rerank"
QUERY = "Where do llamas live?"
DOCS = [
    "The llama is a domesticated South American camelid.",
    "Paris is the capital of France.",
    "Llamas live in the Andes mountains of Peru and Bolivia.",
    "",
    "[SEP] a literal separator stays text",
]
# f32 weights against float64 numpy; llama.cpp's GELU is the tanh approximation, not erf.
TOLERANCE = {"ranker-f32": 2e-3, "ranker-f16": 2e-2}


@pytest.fixture(scope="module")
def http(rerank_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=rerank_server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def pair_ids(rerank_models_dir: Path) -> Iterator[Any]:
    """[CLS] query [SEP] document [SEP] (BERT's pair layout), texts tokenized by llama.cpp."""
    with load(rerank_models_dir / "ranker-f32.gguf", n_ctx=64) as (model, _ctx):
        vocab = llama_cpp.llama_model_get_vocab(model)

        def text_ids(text: str) -> list[int]:
            raw = text.encode()
            buf = (llama_cpp.llama_token * (len(raw) + 8))()
            n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), False, False)
            return list(buf[:n])

        def ids(query: str, doc: str) -> list[int]:
            return [101, *text_ids(query), 102, *text_ids(doc), 102]

        yield ids


@pytest.mark.parametrize("model", ["ranker-f32", "ranker-f16"])
def test_scores_match_numpy(
    http: httpx.Client, model: str, ranker_dir: Path, pair_ids: Any
) -> None:
    r = http.post(URL, json={"model": model, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["object"] == "list" and body["id"]
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(DOCS)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    total = 0
    for item in results:
        ids = pair_ids(QUERY, DOCS[item["index"]])
        total += len(ids)
        # llama.cpp feeds token type 0 to every position (models/bert.cpp), so does the reference.
        ref = cross_encoder_score(ranker_dir, ids, [0] * len(ids))
        assert abs(item["relevance_score"] - ref) <= TOLERANCE[model], (item, ref)
        assert "document" not in item
    assert body["usage"] == {"prompt_tokens": total, "total_tokens": total}
    # Random weights still tell the documents apart: the scores are not one constant.
    assert max(scores) - min(scores) > 0.05


def test_top_n_documents_and_aliases(http: httpx.Client) -> None:
    full = http.post(URL, json={"model": "ranker-f32", "query": QUERY, "documents": DOCS}).json()
    objs = [{"text": d} for d in DOCS]
    for path in ("/v1/rerank", "/rerank", "/reranking"):
        body = {
            "model": "ranker-f32",
            "query": QUERY,
            "documents": objs,
            "top_n": 2,
            "return_documents": True,
        }
        r = http.post(path, json=body)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == [x["index"] for x in full["results"][:2]]
        for x, ref in zip(results, full["results"], strict=False):
            assert x["document"] == {"text": DOCS[x["index"]]}
            assert x["relevance_score"] == pytest.approx(ref["relevance_score"], abs=1e-5)
    many = {"model": "ranker-f32", "query": QUERY, "documents": DOCS, "top_n": 99}
    assert len(http.post(URL, json=many).json()["results"]) == len(DOCS)


def test_pairs_batched_together_score_as_alone(http: httpx.Client) -> None:
    """A pair's score does not depend on the other pairs sharing its decode, beyond rounding:
    encoders run with flash attention, whose CPU kernel takes a tiled path for 64 or more
    rows of a decode and a per-row one below (K and V in f16 either way): 6e-4 here."""
    docs = [f"document number {i} about llamas" for i in range(9)]
    together = http.post(URL, json={"model": "ranker-f32", "query": QUERY, "documents": docs})
    by_index = {x["index"]: x["relevance_score"] for x in together.json()["results"]}
    for i in (0, 8):
        alone = http.post(URL, json={"model": "ranker-f32", "query": QUERY, "documents": [docs[i]]})
        assert alone.json()["results"][0]["relevance_score"] == pytest.approx(by_index[i], rel=1e-3)


def test_rerankers_evicting_each_other_under_load(http: httpx.Client) -> None:
    """Room for two models: the default plus one other. Concurrent requests for two rerankers
    and an embedding model evict one another between requests, never under one (leases): a
    request finding the other place leased is told to retry (503, Retry-After), and every
    answer is equal to the same request served alone."""
    alone = {
        m: http.post(URL, json={"model": m, "query": QUERY, "documents": DOCS}).json()["results"]
        for m in ("ranker-f32", "ranker-f16")
    }
    emb = {"model": "minilm-f16", "input": DOCS[:2]}
    emb_alone = http.post("/v1/embeddings", json=emb).json()["data"]

    def one(i: int) -> tuple[str, Any]:
        kind = ("ranker-f32", "ranker-f16", "embed")[i % 3]
        for _ in range(600):
            if kind == "embed":
                r = http.post("/v1/embeddings", json=emb)
            else:
                r = http.post(URL, json={"model": kind, "query": QUERY, "documents": DOCS})
            if r.status_code != 503:
                break
            # Both places are leased by running requests: back-pressure, never an eviction.
            assert r.json()["error"]["code"] == "unavailable" and "retry-after" in r.headers
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        return kind, r.json()

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(12)))
    for kind, body in answers:
        if kind == "embed":
            for got, ref in zip(body["data"], emb_alone, strict=True):
                # Batched with other requests' inputs: flash attention's rounding (1e-4).
                assert got["embedding"] == pytest.approx(ref["embedding"], abs=5e-4)
        else:
            got = {x["index"]: x["relevance_score"] for x in body["results"]}
            for ref in alone[kind]:
                # Other requests' pairs share the decode: the rounding of
                # test_pairs_batched_together_score_as_alone.
                assert got[ref["index"]] == pytest.approx(ref["relevance_score"], rel=1e-3)
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize("model", ["minilm-f16", "SmolLM2-135M-Instruct.Q4_1", None])
def test_models_that_do_not_rerank(http: httpx.Client, model: str | None) -> None:
    body = {"query": QUERY, "documents": DOCS, **({"model": model} if model else {})}
    err = assert_error(http.post(URL, json=body), 400, "model")
    assert err["code"] == "model_not_supported" and "reranker" in err["message"]


def test_a_reranker_neither_embeds_nor_generates(http: httpx.Client) -> None:
    err = assert_error(http.post("/v1/embeddings", json={"model": "ranker-f32", "input": "x"}), 400)
    assert err["param"] == "model"
    chat = {"model": "ranker-f32", "messages": [{"role": "user", "content": "hi"}]}
    err = assert_error(http.post("/v1/chat/completions", json=chat), 400, "model")
    assert "reranker" in err["message"]
    ok = http.post(URL, json={"model": "ranker-f32", "query": "q", "documents": ["d"]})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("bad", "param"),
    [
        ({"query": ""}, "query"),
        ({"query": None}, "query"),
        ({"query": ["a"]}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": "one string"}, "documents"),
        ({"documents": [1, 2]}, "documents"),
        ({"documents": [{"content": "x"}]}, "documents"),
        ({"documents": ["x"] * 1001}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": -1}, "top_n"),
        ({"top_n": "two"}, "top_n"),
        ({"return_documents": "maybe"}, "return_documents"),
    ],
)
def test_bad_fields(http: httpx.Client, bad: dict[str, Any], param: str) -> None:
    body = {"model": "ranker-f32", "query": QUERY, "documents": DOCS, **bad}
    assert_error(http.post(URL, json=body), 400, param)


def test_pair_longer_than_the_context(http: httpx.Client) -> None:
    # The tiny model's context is 128 positions.
    body = {"model": "ranker-f32", "query": QUERY, "documents": ["ok", "word " * 200]}
    err = assert_error(http.post(URL, json=body), 400, "documents")
    assert err["code"] == "context_length_exceeded" and "input 1" in err["message"]
    assert http.post(URL, json={**body, "documents": ["ok"]}).status_code == 200


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=6,
)
_doc = st.text(max_size=30) | st.fixed_dictionaries({"text": st.text(max_size=30)}) | _any_json
_fields = {
    "model": st.sampled_from(["ranker-f32", "minilm-f16", "missing", None]) | _any_json,
    "documents": st.lists(_doc, max_size=5) | _any_json,
    "top_n": st.integers(-1, 6) | _any_json,
    "return_documents": st.booleans() | _any_json,
}


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.fixed_dictionaries({"query": st.text(max_size=30) | _any_json}, optional=_fields)
    | _any_json
)
def test_fuzz_never_500(http: httpx.Client, body: Any) -> None:
    """Random bodies: every answer is a 200 or a 4xx in the one error shape."""
    r = http.post(URL, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert_error(r, r.status_code)
    else:
        assert isinstance(r.json()["results"], list)
