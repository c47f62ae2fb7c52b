"""Who may do what: key scopes on every route of every dialect, the unauthenticated surface,
paths shown only to admins, key digests in the key file, and SIGHUP reloading keys.

The attacker holds an ordinary (inference) key; the operator holds an admin key. Everything
runs against a real `edged serve` over real HTTP, through the official SDKs where a dialect
has one.
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from daemon.api.auth import (
    ADMIN,
    INFERENCE,
    PUBLIC,
    ApiKeys,
    KeyFileError,
    api_key_guard,
    parse_key_line,
    required_scope,
)
from daemon.api.errors import OPENAI
from daemon.app import create_app
from daemon.config import Settings, embedded_model_path
from tests.conftest import Server, start_server, stop_server
from tests.service.conftest import COUNTING, SMALL, assert_error

MODEL = embedded_model_path().stem
ATTACKER, OPERATOR, TENANT, HASHED = "bob-key", "root-key", "alice-key", "hashed-secret"
CAPPED = "capped-key"

# Every route that manages models or shows the server's insides: admin scope only.
ADMIN_ROUTES = {
    ("GET", "/admin/ps"),
    ("POST", "/admin/load"),
    ("POST", "/admin/unload"),
    ("POST", "/admin/pull"),
    ("POST", "/admin/rescan"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/api/copy"),
    ("GET", "/slots"),
}
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/"), ("GET", "/ui/{name:str}")}


def key_file(path: Path) -> Path:
    """Alice: inference; bob: listed without scopes; root: admin + inference; one by digest."""
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    path.write_text(
        "# tenants\n"
        f"{TENANT} scopes=inference name=alice\n"
        f"{ATTACKER}\n"
        f"{OPERATOR} scopes=inference,admin name=operator\n"
        f"sha256:{digest} scopes=inference\n"
        f"{CAPPED} max_concurrency=1\n"
    )
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("scopes")
    models = tmp / "models"
    models.mkdir()
    keys = key_file(tmp / "keys")
    srv = start_server(
        tmp, *SMALL, "--parallel", "2", "--models-dir", str(models), "--api-key-file", str(keys)
    )
    yield srv, keys
    stop_server(srv)


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ---- the route table ------------------------------------------------------------------------


def _routes(app: Litestar) -> dict[tuple[str, str], str]:
    out = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method in ("HEAD", "OPTIONS"):
                    continue
                out[(method, route.path)] = required_scope(handler)
    return out


def test_every_route_has_the_scope_the_table_says(tmp_path: Path) -> None:
    """A route added later that manages models must be classified here on purpose."""
    app = create_app(Settings(models_dir=tmp_path))
    routes = _routes(app)
    admin = {r for r, s in routes.items() if s == ADMIN}
    public = {r for r, s in routes.items() if s == PUBLIC}
    assert admin == ADMIN_ROUTES
    assert public == PUBLIC_ROUTES
    assert set(routes.values()) <= {ADMIN, INFERENCE, PUBLIC}
    # Sanity: the generation routes of every dialect are in the table as inference.
    for r in [("POST", "/v1/chat/completions"), ("POST", "/v1/messages"), ("POST", "/api/chat")]:
        assert routes[r] == INFERENCE


# ---- the key file ---------------------------------------------------------------------------


def test_key_lines() -> None:
    plain = parse_key_line("k1")
    assert plain is not None and plain.scopes == {INFERENCE} and plain.max_concurrency is None
    full = parse_key_line("k2 scopes=admin,inference name=ops max_concurrency=3")
    assert full is not None and full.scopes == {ADMIN, INFERENCE}
    assert full.name == "ops" and full.max_concurrency == 3
    digest = hashlib.sha256(b"k3").hexdigest()
    by_digest = parse_key_line(f"SHA256:{digest.upper()} scopes=admin")
    assert by_digest is not None and by_digest.identity == digest
    assert parse_key_line("  # comment") is None and parse_key_line("   ") is None
    for bad in [
        "k scopes=root",
        "k scopes=",
        "k admin",
        "k scopes=admin scopes=inference",
        "k max_concurrency=0",
        "k max_concurrency=x",
        "sha256:abc",
    ]:
        with pytest.raises(KeyFileError) as info:
            parse_key_line(bad, "keys line 1")
        assert "keys line 1" in str(info.value)
        assert "k " not in str(info.value)  # the key itself is never echoed


def _guarded_app(keys: ApiKeys) -> Litestar:
    @get("/work", sync_to_thread=False)
    def work() -> str:
        return "ok"

    @get("/manage", sync_to_thread=False, opt={"scope": ADMIN})
    def manage() -> str:
        return "ok"

    return Litestar(
        [work, manage], guards=[api_key_guard(keys)], exception_handlers=OPENAI.handlers()
    )


def test_no_keys_loopback_has_every_scope_wider_bind_only_inference() -> None:
    with TestClient(_guarded_app(ApiKeys([]))) as c:
        assert c.get("/work").status_code == 200 and c.get("/manage").status_code == 200
    with TestClient(_guarded_app(ApiKeys([], frozenset({INFERENCE})))) as c:
        assert c.get("/work").status_code == 200
        assert_error(c.get("/manage"), 403, "insufficient_scope")  # type: ignore[arg-type]


def test_replacing_keys_revokes_at_once() -> None:
    keys = ApiKeys(["old"])
    with TestClient(_guarded_app(keys)) as c:
        assert c.get("/work", headers=_h("old")).status_code == 200
        keys.replace(["new"])
        assert c.get("/work", headers=_h("old")).status_code == 401
        assert c.get("/work", headers=_h("new")).status_code == 200


# ---- the attacker against a real daemon ----------------------------------------------------

ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/ps", None),
    ("POST", "/admin/load", {"model": MODEL}),
    ("POST", "/admin/unload", {"model": MODEL}),
    ("POST", "/admin/rescan", None),
    ("POST", "/admin/pull", {"model": "/etc:Q4_1"}),
    ("POST", "/api/pull", {"model": "~/dl:Q8_0"}),
    ("DELETE", "/api/delete", {"model": MODEL}),
    ("POST", "/api/copy", {"source": MODEL, "destination": "mine"}),
    ("GET", "/slots", None),
]


def _shape(path: str, r: httpx.Response) -> None:
    """A 403 in the dialect's own error shape."""
    assert r.status_code == 403, (path, r.text)
    body = r.json()
    if path.startswith("/api/"):  # Ollama: {"error": "message"}
        assert set(body) == {"error"} and isinstance(body["error"], str)
        assert "admin" in body["error"]
    elif path == "/slots":  # llama-server: {"error": {code, message, type}}
        assert body["error"]["code"] == 403 and "admin" in body["error"]["message"]
    else:
        err = assert_error(r, 403, "insufficient_scope")
        assert err["type"] == "permission_error"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_inference_keys_are_refused_every_admin_route(
    keyed: tuple[Server, Path], method: str, path: str, body: dict[str, Any] | None
) -> None:
    srv, _ = keyed
    for key in (ATTACKER, TENANT, HASHED):
        r = httpx.request(method, srv.url + path, json=body, headers=_h(key), timeout=60)
        _shape(path, r)
    r = httpx.request(method, srv.url + path, json=body, timeout=60)
    assert r.status_code == 401
    # Nothing happened: the default model is still loaded and healthy.
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200


def test_the_operator_may_manage(keyed: tuple[Server, Path]) -> None:
    srv, _ = keyed
    r = httpx.get(f"{srv.url}/admin/ps", headers=_h(OPERATOR), timeout=30)
    assert r.status_code == 200
    (loaded,) = r.json()["models"]
    assert Path(loaded["path"]).is_absolute()  # admins see paths
    # The GPU fit's decision (n_gpu_layers auto; this CPU build has no GPU device).
    assert loaded["gpu_layers"] == 0 and loaded["offload"] == "no GPU"
    assert (
        httpx.post(f"{srv.url}/admin/rescan", headers=_h(OPERATOR), timeout=30).status_code == 200
    )
    assert httpx.get(f"{srv.url}/slots", headers=_h(OPERATOR), timeout=30).status_code == 200


def test_ollama_sdk_sees_the_refusal(keyed: tuple[Server, Path]) -> None:
    client = ollama.Client(host=keyed[0].url, headers=_h(ATTACKER))
    with pytest.raises(ollama.ResponseError) as info:
        client.delete(MODEL)
    assert info.value.status_code == 403
    with pytest.raises(ollama.ResponseError) as info:
        client.copy(MODEL, "stolen")
    assert info.value.status_code == 403
    assert (
        client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}
        ).message
        is not None
    )


def test_inference_still_works_on_every_dialect(keyed: tuple[Server, Path]) -> None:
    srv, _ = keyed
    oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=ATTACKER, max_retries=0)
    r = oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert r.usage is not None and r.usage.completion_tokens > 0
    an = anthropic.Anthropic(base_url=srv.url, api_key=HASHED, max_retries=0)
    m = an.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert m.usage.output_tokens > 0
    t = httpx.post(f"{srv.url}/tokenize", json={"content": "hi"}, headers=_h(TENANT), timeout=30)
    assert t.status_code == 200


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def test_no_absolute_path_reaches_an_inference_key(keyed: tuple[Server, Path]) -> None:
    srv, _ = keyed
    folder = str(embedded_model_path().parent)
    calls = [
        ("GET", "/props", None),
        ("GET", "/lora-adapters", None),
        ("POST", "/api/show", {"model": MODEL}),
        ("POST", "/api/show", {"model": MODEL, "verbose": True}),
        ("GET", "/api/tags", None),
        ("GET", "/api/ps", None),
        ("GET", "/v1/models", None),
        ("GET", "/health", None),
        ("GET", "/metrics", None),
        ("POST", "/api/show", {"model": "no-such-model"}),
        ("POST", "/v1/chat/completions", {"model": "/etc/passwd", "messages": []}),
    ]
    for method, path, body in calls:
        r = httpx.request(method, srv.url + path, json=body, headers=_h(ATTACKER), timeout=60)
        assert r.status_code < 500, (path, r.text)
        text = r.text
        assert folder not in text, (path, text[:500])
        if r.headers.get("content-type", "").startswith("application/json"):
            for s in _strings(r.json()):
                assert not s.startswith(folder), (path, s)
    shown = httpx.post(
        f"{srv.url}/api/show", json={"model": MODEL}, headers=_h(OPERATOR), timeout=30
    ).json()
    assert folder in shown["modelfile"]  # the operator still gets the whole path


def test_unauthenticated_surface_is_status_only(keyed: tuple[Server, Path]) -> None:
    srv, _ = keyed
    for headers in ({}, _h("wrong")):
        r = httpx.get(f"{srv.url}/health", headers=headers, timeout=30)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        assert_error(httpx.get(f"{srv.url}/metrics", headers=headers, timeout=30), 401)
    detailed = httpx.get(f"{srv.url}/health", headers=_h(TENANT), timeout=30).json()
    assert detailed["default_model"] == MODEL and detailed["models"]
    assert httpx.get(f"{srv.url}/metrics", headers=_h(TENANT), timeout=30).status_code == 200
    # The chat page's files are public and carry no data of the server.
    page = httpx.get(f"{srv.url}/", timeout=30).text
    assert MODEL not in page and "sha256" not in page


def test_metrics_public_when_the_operator_opens_it(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, *SMALL, "--parallel", "1", "--metrics-public", env={"EDGED_API_KEYS": "k"}
    )
    try:
        assert httpx.get(f"{srv.url}/metrics", timeout=30).status_code == 200
        assert httpx.get(f"{srv.url}/health", timeout=30).json() == {"status": "ok"}
    finally:
        stop_server(srv)


def test_sighup_reloads_keys(tmp_path: Path) -> None:
    keys = key_file(tmp_path / "keys")
    srv = start_server(tmp_path, *SMALL, "--parallel", "1", "--api-key-file", str(keys))
    try:
        url = f"{srv.url}/v1/models"
        assert httpx.get(url, headers=_h(ATTACKER), timeout=30).status_code == 200
        # Revoke bob, promote alice to admin, add a new key.
        keys.write_text(f"{TENANT} scopes=inference,admin\nnewcomer\n")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(url, headers=_h(ATTACKER), timeout=30).status_code != 401:
            assert time.monotonic() < deadline, "bob's key still works after SIGHUP"
            time.sleep(0.2)
        assert httpx.get(url, headers=_h("newcomer"), timeout=30).status_code == 200
        ps = httpx.get(f"{srv.url}/admin/ps", headers=_h(TENANT), timeout=30)
        assert ps.status_code == 200
        assert (
            httpx.get(f"{srv.url}/admin/ps", headers=_h("newcomer"), timeout=30).status_code == 403
        )
        # A malformed file is refused as a whole: the keys in force stay.
        keys.write_text("broken scopes=root\n")
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert httpx.get(url, headers=_h("newcomer"), timeout=30).status_code == 200
        assert "API keys not reloaded" in srv.log.read_text()
        assert "broken" not in srv.log.read_text()  # no key text in the log
    finally:
        stop_server(srv)


def test_malformed_key_file_stops_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    keys = tmp_path / "keys"
    keys.write_text("secret-value scopes=everything\n")
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "serve", "--api-key-file", str(keys), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "keys line 1" in r.stderr
    assert "secret-value" not in r.stderr


def test_admin_unload_never_cuts_a_running_request(keyed: tuple[Server, Path]) -> None:
    """Unload under a lease is a 409 and the running stream finishes; idle, it unloads."""
    srv, _ = keyed
    body = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": 60,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{srv.url}/v1/completions", json=body, headers=_h(TENANT), timeout=120
    ) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert first
        r = httpx.post(
            f"{srv.url}/admin/unload", json={"model": MODEL}, headers=_h(OPERATOR), timeout=60
        )
        err = assert_error(r, 409, "conflict")
        assert "in use" in err["message"]
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in rest)
    r = httpx.post(
        f"{srv.url}/admin/unload", json={"model": MODEL}, headers=_h(OPERATOR), timeout=60
    )
    assert r.status_code == 200 and r.json()["was_loaded"] is True
    # The next request loads it again, and health comes back.
    oa = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=TENANT, max_retries=0)
    oa.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
    )
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200


def test_a_keys_own_concurrency_cap(keyed: tuple[Server, Path]) -> None:
    """`max_concurrency=1` on a key's line: its second request waits for its first although a
    slot is free, while another key's request takes that slot at once."""
    import threading

    srv, _ = keyed
    # Long enough that the first stream is still running when the second arrives.
    body = {"model": MODEL, "prompt": COUNTING, "max_tokens": 200, "temperature": 0}
    body["stream"] = True

    def health() -> dict[str, Any]:
        r = httpx.get(f"{srv.url}/health", headers=_h(OPERATOR), timeout=30)
        (m,) = [m for m in r.json()["models"] if m["name"] == MODEL]
        return m

    def second(key: str, out: list[int]) -> None:
        r = httpx.post(
            f"{srv.url}/v1/completions",
            json={**body, "stream": False, "max_tokens": 4},
            headers=_h(key),
            timeout=300,
        )
        out.append(r.status_code)

    for other, capped in ((CAPPED, True), (TENANT, False)):
        done: list[int] = []
        with httpx.stream(
            "POST", f"{srv.url}/v1/completions", json=body, headers=_h(CAPPED), timeout=300
        ) as stream:
            lines = (line for line in stream.iter_lines() if line.startswith("data:"))
            next(lines)
            t = threading.Thread(target=second, args=(other, done))
            t.start()
            deadline = time.monotonic() + 60
            while True:  # the second request has arrived: counted, admitted or not
                m = health()
                if m["busy_slots"] + m["queued"] >= 2 and (capped or m["busy_slots"] == 2):
                    break
                assert time.monotonic() < deadline, m
                time.sleep(0.05)
            if capped:
                # Several steps later, with a slot free all along, it still waits its turn.
                for _ in range(5):
                    next(lines)
                m = health()
                assert m["queued"] == 1 and m["busy_slots"] == 1, m
            for _ in lines:
                pass
        t.join(300)
        assert done == [200]
