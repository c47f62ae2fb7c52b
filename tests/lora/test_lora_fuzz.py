"""The `lora` field fuzzed on every generation dialect (and the model alias): never a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server
from tests.lora.conftest import MODEL
from tests.lora.test_lora_server import GENERATION_BODIES

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "b", "nope", "", "a+b"]),
    st.text(max_size=8),
)
ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["a", "b", "nope", ""]), ANY),
        "scale": st.one_of(st.floats(-200, 200), st.sampled_from([0, 1, 1e9]), ANY),
        "id": st.one_of(st.integers(-2, 3), ANY),
    },
)
LORA = st.one_of(ANY, st.lists(ENTRY, max_size=4), st.lists(ENTRY, min_size=17, max_size=18))
MODEL_NAME = st.one_of(
    st.just(MODEL),
    st.sampled_from([f"{MODEL}+a", f"{MODEL}+b+a", f"{MODEL}+", f"{MODEL}++a", f"{MODEL}+a+a"]),
    st.text(max_size=10).map(lambda s: f"{MODEL}+{s}"),
)
PATHS = [*sorted(GENERATION_BODIES), "/completion", "/api/generate#request_id"]


@pytest.fixture(scope="module")
def http(server4: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server4.url, timeout=600) as c:
        yield c


def body_for(path: str, lora: Any, model: str) -> tuple[str, dict[str, Any]]:
    if path == "/completion":
        return path, {"prompt": "hi", "n_predict": 1, "lora": lora, "model": model}
    if path == "/api/generate#request_id":
        return "/api/generate", {
            "request_id": "fuzz",
            "prompt": "hi",
            "stream_response": False,
            "generation_config": {"max_new_tokens": 1},
            "lora": lora,
            "model": model,
        }
    return path, {**GENERATION_BODIES[path], "model": model, "lora": lora}


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), lora=LORA, model=MODEL_NAME)
def test_lora_field_never_5xx(http: httpx.Client, path: str, lora: Any, model: str) -> None:
    url, body = body_for(path, lora, model)
    # NaN and ±inf go out as the bare words Python writes: not JSON, still never a 5xx.
    r = http.post(url, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, (url, body, r.text)
    assert r.status_code in (200, 400, 404, 422), (url, body, r.status_code, r.text)
    assert http.get("/health").status_code == 200
