"""Every field of every endpoint, fuzzed against a real server: bad input is a 4xx, never a 5xx.

Bodies come from each endpoint's pydantic model: its JSON schema drives a Hypothesis strategy
that mixes valid values (within the schema's bounds, at its edges) with wrong types, huge
numbers, unicode, deep nesting and bodies that are not JSON at all. Adding an endpoint is one
row in ENDPOINTS. The run is derandomized for CI; EDGED_FUZZ_RANDOM=1 explores new bodies and
EDGED_FUZZ_SCALE multiplies the example counts.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from daemon.api.generate.protocol import GenerateBatchRequest, GenerateRequest
from daemon.api.openai.embeddings import EmbeddingRequest
from daemon.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from daemon.api.together.protocol import InferenceRequest
from daemon.api.tokenize import DetokenizeRequest, TokenizeRequest
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.timeout(900)

SCALE = float(os.environ.get("EDGED_FUZZ_SCALE", "1"))
TOKEN_CAP = 8  # --max-tokens-cap: larger budgets are a fast 400, so no body generates for long


@dataclass(frozen=True)
class Endpoint:
    """One route to fuzz: its body model (None: no body), how many bodies, and defaults that
    keep valid bodies quick (applied only where the generated body left the field out)."""

    method: str
    path: str
    model: type[BaseModel] | None
    examples: int
    defaults: dict[str, Any] = field(default_factory=dict)


ENDPOINTS = [
    Endpoint("POST", "/v1/chat/completions", ChatCompletionRequest, 500, {"max_tokens": 4}),
    Endpoint("POST", "/v1/chat/completions/input_tokens", ChatCompletionRequest, 150),
    Endpoint("POST", "/v1/completions", CompletionRequest, 350, {"max_tokens": 4}),
    Endpoint("POST", "/v1/embeddings", EmbeddingRequest, 150),
    Endpoint("POST", "/inference", InferenceRequest, 200, {"max_tokens": 4}),
    Endpoint("POST", "/api/generate", GenerateRequest, 300),
    Endpoint("POST", "/api/generate-batch", GenerateBatchRequest, 200),
    Endpoint("POST", "/tokenize", TokenizeRequest, 150),
    Endpoint("POST", "/detokenize", DetokenizeRequest, 150),
    Endpoint("GET", "/v1/models", None, 10),
    Endpoint("GET", "/health", None, 10),
    Endpoint("GET", "/metrics", None, 10),
]

# ---- strategies from JSON schemas ---------------------------------------------------------

_HUGE = st.sampled_from([2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30, 1e308, -1e308])
_TEXT = st.text(max_size=40) | st.sampled_from(["", " ", "²", "٣", "\x00", "\ud7ff", "😀" * 3])
_SCALARS = st.none() | st.booleans() | st.integers() | _HUGE | st.floats() | _TEXT
# Wrong-typed values of any shape, nested a few levels.
WILD = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


# Fields whose schema-valid values would almost always end in an early 404 (a model name) or 400
# (a budget above --max-tokens-cap, more choices than slots): mostly servable values instead.
_SMALL = st.sampled_from([0, 1, 2, 3, 4, 4, 8, 8, 1, 2, 9, 100, 10**7])
_FEW = st.sampled_from([1, 1, 1, 2, 2, 3, 4, 1, 2, -1, 0, 5, 17, 200])
_NAMED = {
    "max_tokens": _SMALL,
    "max_completion_tokens": _SMALL,
    "max_new_tokens": _SMALL,
    "n": _FEW,
    "best_of": _FEW,
    "num_beams": _FEW,
    "model": st.sampled_from([None, "SmolLM2-135M-Instruct.Q4_1"]) | _TEXT,
    "safety_model": st.sampled_from([None, "SmolLM2-135M-Instruct.Q4_1"]) | _TEXT,
    "logit_bias": st.one_of(
        *[st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=4)] * 4,
        st.dictionaries(st.integers(0, 60000).map(str) | _TEXT, _SCALARS, max_size=5),
    ),
    "keep_alive": st.sampled_from([None, 0, 30, "5m", "1h", -1, "x", True]),
}


class SchemaStrategies:
    """Hypothesis strategies for the values one JSON schema (with its `$defs`) describes.

    `noise` is the chance, per value, of a wrong-typed one instead (and of leaving a required
    field out): 0 gives bodies that validate, a little gives bodies wrong in one or two places.
    """

    def __init__(self, schema: dict[str, Any], noise: float = 0.0) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.root = schema
        self.noise = noise

    @classmethod
    def body(cls, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
        """A request body: half valid, a third slightly wrong, the rest anything at all."""
        return st.one_of(
            cls(schema).valid(schema, 0),
            cls(schema).valid(schema, 0),
            cls(schema).valid(schema, 0),
            cls(schema, 0.08).valid(schema, 0),
            cls(schema, 0.08).valid(schema, 0),
            WILD,
        )

    def value(self, node: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        """A field value, wrong-typed with probability `noise`."""
        if not self.noise:
            return self.valid(node, depth)
        return st.integers(0, 999).flatmap(
            lambda r: WILD if r < self.noise * 1000 else self.valid(node, depth)
        )

    def valid(self, node: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        if depth > 12:
            return st.none()
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            return st.deferred(lambda: self.valid(self.defs[name], depth))
        for key in ("anyOf", "oneOf"):
            if key in node:
                return st.one_of(*(self.valid(n, depth) for n in node[key]))
        if "allOf" in node:
            return self.valid(node["allOf"][0], depth)
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        kind = node.get("type")
        if isinstance(kind, list):
            return st.one_of(*(self.valid({**node, "type": k}, depth) for k in kind))
        return self._typed(kind, node, depth)

    def _typed(self, kind: Any, node: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        if kind == "string":
            lo, hi = node.get("minLength", 0), node.get("maxLength", 10**9)
            if "pattern" in node:
                strings = st.from_regex(node["pattern"], fullmatch=True)
            else:
                strings = st.text(max_size=60) | st.sampled_from(["hello", "Hi!", "0", "²", " "])
            return strings.filter(lambda s: lo <= len(s) <= hi) | st.just("x" * lo)
        if kind == "integer":
            lo = node.get("minimum", node.get("exclusiveMinimum", -(2**40)) + 1)
            hi = node.get("maximum", node.get("exclusiveMaximum", 2**40) - 1)
            edges = [v for v in (lo, hi, lo + 1, hi - 1, 0, 1, 2) if lo <= v <= hi]
            return st.integers(min_value=lo, max_value=hi) | st.sampled_from(edges)
        if kind == "number":
            lo = node.get("minimum", node.get("exclusiveMinimum"))
            hi = node.get("maximum", node.get("exclusiveMaximum"))
            floats = st.floats(
                min_value=lo,
                max_value=hi,
                allow_nan=False,
                allow_infinity=False,
                exclude_min="exclusiveMinimum" in node,
                exclude_max="exclusiveMaximum" in node,
            )
            edges = [
                v
                for v in (lo, hi, 0.0, 1.0)
                if v is not None
                and (lo is None or v > lo or (v == lo and "minimum" in node))
                and (hi is None or v < hi or (v == hi and "maximum" in node))
            ]
            return floats | st.sampled_from(edges) if edges else floats
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = node.get("items", {})
            lo = node.get("minItems", 0)
            return st.lists(self.value(items, depth + 1), min_size=lo, max_size=max(lo, 4))
        if kind == "object" or "properties" in node:
            return self._object(node, depth)
        return WILD

    def _object(self, node: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        props: dict[str, Any] = node.get("properties", {})
        required = set(node.get("required", ()))
        if not props:
            extra = node.get("additionalProperties")
            values = self.value(extra, depth + 1) if isinstance(extra, dict) else WILD
            return st.dictionaries(_TEXT, values, max_size=4)
        strategies = {
            k: _NAMED[k] if k in _NAMED else self.value(v, depth + 1) for k, v in props.items()
        }
        drop_required = int(self.noise * 1000)

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, strat in strategies.items():
                roll = draw(st.integers(0, 999))
                if (roll >= drop_required) if key in required else (roll < 300):
                    out[key] = draw(strat)
            return out

        return build()


# ---- the run ------------------------------------------------------------------------------

_JSON = {"content-type": "application/json"}
STATUSES: dict[str, Counter[int]] = {}
FAILURES: list[str] = []


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_server(
        tmp,
        "--parallel",
        "4",
        "--ctx-size",
        "512",
        "--max-tokens-cap",
        str(TOKEN_CAP),
        env={"EDGED_GENERATION__MAX_NEW_TOKENS": "4"},
    )
    yield srv
    stop_server(srv)


def _encode(body: Any) -> bytes:
    # allow_nan: a non-finite float goes out as `NaN`/`Infinity`, which is not JSON (a 400).
    return json.dumps(body, allow_nan=True).encode()


def _check(ep: Endpoint, client: httpx.Client, body: Any) -> None:
    if isinstance(body, dict):
        for k, v in ep.defaults.items():
            if k not in body and "max_completion_tokens" not in body:
                body[k] = v
    content = _encode(body) if ep.model is not None else None
    r = client.request(ep.method, ep.path, content=content, headers=_JSON, timeout=120)
    STATUSES.setdefault(ep.path, Counter())[r.status_code] += 1
    if r.status_code >= 500:
        FAILURES.append(f"{ep.method} {ep.path} {r.status_code} {content!r:.600} -> {r.text:.300}")
    assert r.status_code < 500, (content, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        if ep.path == "/api/generate" and isinstance(err, str):
            # A body that is not the seed's (no request_id) is Ollama's /api/generate, whose
            # errors are {"error": "..."} (README: one path, two dialects).
            assert not (isinstance(body, dict) and "request_id" in body), r.text
            return
        assert set(err) == {"message", "type", "param", "code"}, r.text


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[f"{e.method} {e.path}" for e in ENDPOINTS])
def test_fuzz_endpoint(fuzz_server: Server, ep: Endpoint) -> None:
    """No body, however wrong, makes the server answer 5xx; errors have the one shape."""
    strategy = SchemaStrategies.body(ep.model.model_json_schema()) if ep.model else st.just(None)
    with httpx.Client(base_url=fuzz_server.url) as client:

        @settings(
            max_examples=max(1, int(ep.examples * SCALE)),
            deadline=None,
            derandomize=os.environ.get("EDGED_FUZZ_RANDOM") != "1",
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=strategy)
        def run(body: Any) -> None:
            _check(ep, client, body)

        run()
        # Bytes that are not a JSON document at all.
        if ep.model is not None:
            for raw in (b"", b"{", b"\xff\xfe", b"[]" * 1000, b'{"a":' * 600 + b"1"):
                r = client.request(ep.method, ep.path, content=raw, headers=_JSON, timeout=60)
                STATUSES[ep.path][r.status_code] += 1
                assert r.status_code < 500, (raw[:50], r.text)


def test_server_survives_the_fuzz(fuzz_server: Server) -> None:
    """After every body: the daemon lives, every slot is free, nothing is queued."""
    assert fuzz_server.proc.poll() is None
    deadline = time.monotonic() + 60
    while True:
        health = httpx.get(f"{fuzz_server.url}/health", timeout=10)
        models = health.json()["models"]
        idle = all(m["busy_slots"] == 0 and m["queued"] == 0 for m in models)
        if health.status_code == 200 and idle and all(m["alive"] for m in models):
            break
        assert time.monotonic() < deadline, health.text
        time.sleep(0.5)
    total = sum(sum(c.values()) for c in STATUSES.values())
    lines = [f"{path}: {dict(sorted(c.items()))}" for path, c in STATUSES.items()]
    Path(os.environ.get("EDGED_FUZZ_REPORT", os.devnull)).write_text("\n".join(lines) + "\n")
    print(f"\nfuzzed {total} bodies:\n" + "\n".join(lines))
    assert not FAILURES, "\n".join(FAILURES)
