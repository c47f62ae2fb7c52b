"""API keys, non-loopback refusal, CORS, chat-template sandbox, the api_key dependency."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar, get
from litestar.di import NamedDependency, Provide
from litestar.testing import TestClient

from daemon.api.auth import ApiKeys, api_key_guard, is_loopback, provide_api_key
from daemon.api.errors import OPENAI
from daemon.core.errors import to_api
from daemon.engine.errors import InvalidInput
from daemon.engine.loading.chat_template import ChatTemplate
from tests.conftest import Server, free_port, start_server, stop_server
from tests.service.conftest import SMALL, assert_error

ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A daemon with two keys from the environment and one from a key file."""
    tmp = tmp_path_factory.mktemp("keyed")
    (tmp / "keys").write_text("# operators\ngamma\n\n")
    srv = start_server(
        tmp,
        *SMALL,
        "--parallel",
        "2",
        "--api-key-file",
        str(tmp / "keys"),
        "--cors-origin",
        ORIGIN,
        env={"EDGED_API_KEYS": "alpha, beta"},
    )
    yield srv
    stop_server(srv)


@pytest.mark.parametrize("path", ["/v1/models", "/tokenize", "/v1/detokenize"])
def test_missing_and_wrong_keys_are_401(keyed: Server, path: str) -> None:
    method = "GET" if path == "/v1/models" else "POST"
    body = {"content": "x", "tokens": [1]}
    for headers in ({}, {"authorization": "Bearer nope"}, {"x-api-key": "alph"}):
        r = httpx.request(method, keyed.url + path, json=body, headers=headers, timeout=30)
        err = assert_error(r, 401, "invalid_api_key")
        assert err["type"] == "authentication_error"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer alpha"},
        {"authorization": "bearer beta"},
        {"x-api-key": "beta"},
        {"x-api-key": "gamma"},  # from --api-key-file
    ],
)
def test_both_header_forms_accept_every_key(keyed: Server, headers: dict[str, str]) -> None:
    assert httpx.get(f"{keyed.url}/v1/models", headers=headers, timeout=30).status_code == 200


def test_health_needs_no_key_metrics_does(keyed: Server) -> None:
    """A load balancer's health check needs no key (and gets the status only); /metrics
    carries per-model counters, so it wants a key unless the operator opens it."""
    r = httpx.get(f"{keyed.url}/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert_error(httpx.get(f"{keyed.url}/metrics", timeout=30), 401, "invalid_api_key")
    auth = {"authorization": "Bearer alpha"}
    assert httpx.get(f"{keyed.url}/metrics", headers=auth, timeout=30).status_code == 200


def test_cors_only_for_configured_origins(keyed: Server) -> None:
    def preflight(origin: str) -> httpx.Response:
        headers = {"origin": origin, "access-control-request-method": "POST"}
        return httpx.options(f"{keyed.url}/v1/chat/completions", headers=headers, timeout=30)

    assert preflight(ORIGIN).headers.get("access-control-allow-origin") == ORIGIN
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers


def test_tokenize_round_trip(keyed: Server) -> None:
    auth = {"x-api-key": "alpha"}
    text = "Hello, wörld! <|im_start|>user"
    r = httpx.post(f"{keyed.url}/tokenize", json={"content": text}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    r = httpx.post(f"{keyed.url}/v1/detokenize", json={"tokens": tokens}, headers=auth, timeout=30)
    assert r.json()["content"] == text
    # The /v1 alias answers the same; out-of-vocabulary ids are a 400 naming the param.
    r2 = httpx.post(f"{keyed.url}/v1/tokenize", json={"content": text}, headers=auth, timeout=30)
    assert r2.json()["tokens"] == tokens
    r = httpx.post(f"{keyed.url}/detokenize", json={"tokens": [-1]}, headers=auth, timeout=30)
    assert assert_error(r, 400)["param"] == "tokens"


def test_metrics_after_traffic(keyed: Server) -> None:
    auth = {"authorization": "Bearer alpha"}
    body = {"prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{keyed.url}/v1/completions", json=body, headers=auth, timeout=120
    ) as r:
        assert r.status_code == 200
        r.read()
    body["stream"] = False
    r = httpx.post(f"{keyed.url}/v1/completions", json=body, headers=auth, timeout=120)
    assert r.status_code == 200 and r.headers["x-request-id"]
    httpx.get(f"{keyed.url}/v1/models", timeout=30)  # a 401, counted too
    text = httpx.get(f"{keyed.url}/metrics", headers=auth, timeout=30).text
    model = 'model="SmolLM2-135M-Instruct.Q4_1"'
    for line in [
        'edged_requests_total{method="POST",route="/v1/completions",status="200"} 2.0',
        'edged_requests_total{method="GET",route="/v1/models",status="401"}',
        f"edged_completion_tokens_total{{{model}}} 8.0",
        f"edged_prompt_tokens_total{{{model}}}",
        f"edged_time_to_first_token_seconds_count{{{model}}} 2.0",
        f"edged_time_per_output_token_seconds_count{{{model}}} 2.0",
        f"edged_queue_depth{{{model}}} 0.0",
        f"edged_slots_busy{{{model}}} 0.0",
        f"edged_slots{{{model}}} 2.0",
        f"edged_kv_cache_tokens{{{model}}}",
        f"edged_request_store_bytes{{{model}}}",
        f"edged_request_store_hits_total{{{model}}}",
        f"edged_prefix_cache_hit_tokens_total{{{model}}}",
        "edged_model_loads_total 1.0",
        "edged_models_loaded 1.0",
        "edged_draining 0.0",
    ]:
        assert line in text, line
    # The access log has one line per API request with its id, model and tokens.
    log = keyed.log.read_text()
    assert f"request_id={r.headers['x-request-id']}" in log
    assert "model=SmolLM2-135M-Instruct.Q4_1 prompt_tokens=" in log
    assert "completion_tokens=4" in log


def test_non_loopback_bind_without_keys_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "daemon", "serve", "--host", "0.0.0.0", "--port"]
    r = subprocess.run(
        [*cmd, str(free_port())], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in r.stderr
    assert "--insecure-no-auth" in r.stderr


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.9.10")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("myhost.example")


def _app(keys: list[str]) -> Litestar:
    @get("/whoami", sync_to_thread=False)
    def whoami(api_key: NamedDependency[str | None]) -> dict[str, str | None]:
        return {"key": api_key}

    return Litestar(
        [whoami],
        guards=[api_key_guard(ApiKeys(keys), frozenset())],
        dependencies={"api_key": Provide(provide_api_key, sync_to_thread=False)},
        exception_handlers=OPENAI.handlers(),
    )


def test_api_key_dependency_is_the_key_identity() -> None:
    with TestClient(_app(["k1", "k2"])) as c:
        r = c.get("/whoami", headers={"authorization": "Bearer k2"})
        assert r.json() == {"key": hashlib.sha256(b"k2").hexdigest()}
        assert c.get("/whoami", headers={"x-api-key": "k1"}).json()["key"] != r.json()["key"]
        assert c.get("/whoami").status_code == 401
    with TestClient(_app([])) as c:
        assert c.get("/whoami").json() == {"key": None}


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ messages.append({'role': 'x'}) }}",
    ],
)
def test_malicious_chat_template_is_a_400(source: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])
    api = to_api(info.value)  # what any dialect answers
    assert api.status_code == 400 and api.param == "messages"


def test_template_cannot_read_internals() -> None:
    # The sandbox refuses the attribute (as transformers' renderer does): a 400, no text.
    with pytest.raises(InvalidInput, match="chat template refused"):
        ChatTemplate("[{{ ''.__class__.__mro__ }}]").render([])
