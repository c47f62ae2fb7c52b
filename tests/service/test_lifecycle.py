"""Model lifecycle: idle unload and reload, the loaded-model cap, corrupt files answered cleanly."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.service.conftest import SMALL, assert_error, health

DEFAULT = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    """Two more names for the embedded model, and two broken GGUFs, in a models dir."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    models = tmp / "models"
    models.mkdir()
    for name in ("second", "third"):
        os.symlink(model_path, models / f"{name}.gguf")
    (models / "truncated.gguf").write_bytes(model_path.read_bytes()[:2_000_000])
    (models / "garbage.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    server = start_server(
        tmp,
        *SMALL,
        "--parallel",
        "1",
        "--models-dir",
        str(models),
        "--keep-alive",
        "2",
        "--max-loaded-models",
        "2",
    )
    yield server
    stop_server(server)


def _loaded(url: str) -> list[str]:
    return [m["name"] for m in health(url)["models"]]


def _use(url: str, model: str) -> httpx.Response:
    return httpx.post(f"{url}/tokenize", json={"model": model, "content": "hi"}, timeout=120)


def _wait_for(url: str, names: list[str], limit: float) -> float:
    start = time.monotonic()
    while sorted(_loaded(url)) != sorted(names):
        assert time.monotonic() - start < limit, _loaded(url)
        time.sleep(0.2)
    return time.monotonic() - start


def test_v1_models_lists_every_servable_file(srv: Server) -> None:
    ids = {m["id"] for m in httpx.get(f"{srv.url}/v1/models", timeout=30).json()["data"]}
    assert {DEFAULT, "second", "third", "truncated", "garbage"} <= ids


def test_idle_model_unloads_and_reloads(srv: Server) -> None:
    assert _use(srv.url, "second").status_code == 200
    assert sorted(_loaded(srv.url)) == sorted([DEFAULT, "second"])
    waited = _wait_for(srv.url, [DEFAULT], 20)
    assert waited > 0.5  # it stayed for its keep-alive first
    assert _use(srv.url, "second").status_code == 200
    assert sorted(_loaded(srv.url)) == sorted([DEFAULT, "second"])
    _wait_for(srv.url, [DEFAULT], 20)  # the default model itself never unloads
    metrics = httpx.get(f"{srv.url}/metrics", timeout=30).text
    assert "edged_model_unloads_total 2.0" in metrics


def test_cap_evicts_the_least_recently_used_idle_model(srv: Server) -> None:
    assert _use(srv.url, "second").status_code == 200
    assert _use(srv.url, "third").status_code == 200  # cap 2: "second" makes room
    assert sorted(_loaded(srv.url)) == sorted([DEFAULT, "third"])


@pytest.mark.parametrize("name", ["truncated", "garbage"])
def test_corrupt_gguf_is_a_clean_503_and_others_keep_serving(srv: Server, name: str) -> None:
    err = assert_error(_use(srv.url, name), 503, "model_load_failed")
    assert name in err["message"]
    assert srv.proc.poll() is None
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200
    body = {"prompt": "Q: The capital of France is?\nA:", "max_tokens": 3, "temperature": 0}
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["text"]
    assert "edged_model_load_failures_total" in httpx.get(f"{srv.url}/metrics").text
    # What their headers say is still shown: the truncated copy's header is whole (its
    # weights are cut), the random bytes' is no header at all.
    tags = httpx.get(f"{srv.url}/api/tags", timeout=30).json()["models"]
    assert {DEFAULT, name} <= {m["name"] for m in tags}
    show = httpx.post(f"{srv.url}/api/show", json={"model": name, "verbose": True}, timeout=30)
    assert show.status_code == 200, show.text
    info = show.json()
    if name == "truncated":
        assert info["details"]["family"] == "llama"
        assert len(info["model_info"]["tokenizer.ggml.tokens"]) == 49152
    else:
        assert info["details"]["family"] == "" and info["model_info"] == {}


def test_sighup_rescans_the_models_directory(srv: Server, model_path: Path) -> None:
    models = next(p for p in srv.log.parent.iterdir() if p.name == "models")
    os.symlink(model_path, models / "added-later.gguf")

    def ids() -> set[str]:
        data = httpx.get(f"{srv.url}/v1/models", timeout=30).json()["data"]
        return {m["id"] for m in data}

    assert "added-later" not in ids()
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "added-later" not in ids():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _use(srv.url, "added-later").status_code == 200
    assert srv.proc.poll() is None


def test_request_keep_alive_overrides_the_daemon_setting(srv: Server) -> None:
    """Ollama's per-request keep_alive: "-1" keeps a model loaded, 0 unloads it once idle."""
    _wait_for(srv.url, [DEFAULT], 20)
    body = {"model": "third", "prompt": "Hi", "max_tokens": 1, "keep_alive": -1}
    assert httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120).status_code == 200
    time.sleep(4)  # twice the daemon's --keep-alive of 2 s
    assert sorted(_loaded(srv.url)) == sorted([DEFAULT, "third"])
    body["keep_alive"] = "0s"
    assert httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120).status_code == 200
    _wait_for(srv.url, [DEFAULT], 10)
    bad = httpx.post(f"{srv.url}/v1/completions", json={**body, "keep_alive": "soon"}, timeout=30)
    assert_error(bad, 400)
