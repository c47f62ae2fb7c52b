"""POST /v1/embeddings through the official openai client against a real daemon."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import Server
from tests.quantize.bert_reference import bert_reference

F16, Q8 = "minilm-f16", "minilm-q8_0"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map sentences to vectors; similar sentences land close together!",
    "hello",
]
MIN_COSINE = {F16: 0.99, Q8: 0.98}


@pytest.fixture(scope="module")
def client(embed_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def http(embed_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=embed_server.url, timeout=60) as c:
        yield c


def _vec(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("model", [F16, Q8])
def test_matches_numpy_reference(
    model: str,
    client: OpenAI,
    minilm_dir: Path,
    minilm_ids: Callable[[str], list[int]],
) -> None:
    """Each vector agrees with an independent numpy BERT (mean pooling, L2 norm)."""
    r = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    cosines = []
    for text, d in zip(TEXTS, r.data, strict=True):
        vec = _vec(d.embedding)
        assert vec.shape == (384,)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
        cosines.append(_cos(vec, bert_reference(minilm_dir, minilm_ids(text))))
    print(f"{model} cosine vs numpy reference: {[round(c, 5) for c in cosines]}")
    assert min(cosines) >= MIN_COSINE[model], cosines


def test_single_string_and_usage(client: OpenAI, minilm_ids: Callable[[str], list[int]]) -> None:
    r = client.embeddings.create(model=F16, input=TEXTS[0], encoding_format="float")
    assert r.object == "list" and r.model == F16
    assert len(r.data) == 1 and r.data[0].object == "embedding" and r.data[0].index == 0
    n = len(minilm_ids(TEXTS[0]))
    assert r.usage.prompt_tokens == n and r.usage.total_tokens == n

    many = client.embeddings.create(model=F16, input=TEXTS, encoding_format="float")
    total = sum(len(minilm_ids(t)) for t in TEXTS)
    assert many.usage.prompt_tokens == total and many.usage.total_tokens == total
    assert _cos(_vec(many.data[0].embedding), _vec(r.data[0].embedding)) > 0.9999


def test_token_arrays_embed_like_text(
    client: OpenAI, minilm_ids: Callable[[str], list[int]]
) -> None:
    """Token ids are taken as given: the [CLS] ... [SEP] ids of a text embed as the text."""
    text = client.embeddings.create(model=F16, input=TEXTS[:2], encoding_format="float")
    ids = [minilm_ids(t) for t in TEXTS[:2]]
    one = client.embeddings.create(model=F16, input=ids[0], encoding_format="float")
    two = client.embeddings.create(model=F16, input=ids, encoding_format="float")
    assert one.usage.prompt_tokens == len(ids[0])
    assert _cos(_vec(one.data[0].embedding), _vec(text.data[0].embedding)) > 0.9999
    for a, b in zip(two.data, text.data, strict=True):
        assert _cos(_vec(a.embedding), _vec(b.embedding)) > 0.9999


def test_base64_is_little_endian_float32(http: httpx.Client, client: OpenAI) -> None:
    body = {"model": F16, "input": TEXTS[1]}
    floats = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    r = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 4 * 384
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), np.asarray(floats, dtype=np.float32))
    # The openai client asks for base64 by default and decodes it itself.
    via_client = client.embeddings.create(model=F16, input=TEXTS[1])
    assert np.array_equal(np.asarray(via_client.data[0].embedding, np.float32), floats)


def test_dimensions_truncate_and_renormalize(client: OpenAI) -> None:
    full = _vec(client.embeddings.create(model=F16, input=TEXTS[0]).data[0].embedding)
    r = client.embeddings.create(model=F16, input=TEXTS[0], dimensions=64)
    short = _vec(r.data[0].embedding)
    assert short.shape == (64,)
    assert abs(float(np.linalg.norm(short)) - 1.0) < 1e-5
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    same = client.embeddings.create(model=F16, input=TEXTS[0], dimensions=384)
    assert np.allclose(_vec(same.data[0].embedding), full, atol=1e-7)


def test_concurrent_requests_match_single_ones(client: OpenAI) -> None:
    texts = [f"request number {i}: {TEXTS[i % len(TEXTS)]}" for i in range(8)]
    single = [_vec(client.embeddings.create(model=F16, input=t).data[0].embedding) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: client.embeddings.create(model=F16, input=t), texts))
    for r, ref in zip(results, single, strict=True):
        assert _cos(_vec(r.data[0].embedding), ref) > 0.9999


def test_health_lists_the_embedding_model(http: httpx.Client, client: OpenAI) -> None:
    client.embeddings.create(model=F16, input="load me")
    r = http.get("/health")
    assert r.status_code == 200, r.text
    assert F16 in {m["name"] for m in r.json()["models"]}
