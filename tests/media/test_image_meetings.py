"""Images meeting the rest of the daemon over HTTP: a hang-up while an image is decoded and
encoded, two API keys sending the same image, and a model with a projector evicted and
loaded again. Each ends where it must: the answer a fresh daemon gives, nothing held."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tests.conftest import Server, start_server, stop_server
from tests.media.conftest import ARGS
from tests.media.tiny_vlm import png_bytes, sample_image

QUESTION = "What is in this picture?"


def body(seed: int, model: str | None = None, **kw: object) -> dict[str, object]:
    url = "data:image/png;base64," + base64.b64encode(png_bytes(sample_image(seed=seed))).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    out: dict[str, object] = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **kw,
    }
    if model is not None:
        out["model"] = model
    return out


def answer(url: str, req: dict[str, object], key: str | None = None) -> tuple[str, int]:
    """The greedy text and the prompt tokens the daemon found cached."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{url}/v1/chat/completions", json=req, headers=headers, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    cached = (out["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return out["choices"][0]["message"]["content"], cached


def hang_up_after_sending(url: str, req: dict[str, object]) -> None:
    """Send the whole request, then close the connection before any answer byte is read:
    the daemon is decoding or encoding the image when the client goes away."""
    u = urlparse(url)
    data = json.dumps({**req, "stream": True}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head + data)


def idle(url: str, timeout: float = 120.0) -> bool:
    """Whether every slot of the daemon becomes free (llama-server's /slots) in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = httpx.get(f"{url}/slots", timeout=30).json()
        if not any(s.get("is_processing") for s in slots):
            return True
        time.sleep(0.2)
    return False


def test_a_hang_up_while_an_image_encodes_loses_nothing(vlm_server: Server) -> None:
    url = vlm_server.url
    want, _ = answer(url, body(31))
    other, _ = answer(url, body(32))
    for _ in range(3):
        hang_up_after_sending(url, body(33))  # an image never answered
        hang_up_after_sending(url, body(31))  # the reference's image
    # Mid-stream too: the first event read, then gone.
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body(32), "stream": True}, timeout=300
    ) as r:
        next(r.iter_lines())
    assert idle(url)
    assert answer(url, body(31))[0] == want
    assert answer(url, body(32))[0] == other
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_two_keys_sending_the_same_image_reuse_nothing_of_each_other(keyed_vlm: Server) -> None:
    """gamma's image and prompt are in a slot and the prompt cache; delta sends the very same
    request and is served from nothing of gamma's (no cached token), with the same answer.
    gamma's own return is served from its slot. (Keys no other test module uses.)"""
    req = body(41)
    first, cached = answer(keyed_vlm.url, req, "gamma")
    assert cached == 0
    again, cached_other = answer(keyed_vlm.url, req, "delta")
    assert (again, cached_other) == (first, 0)
    mine, cached_alpha = answer(keyed_vlm.url, req, "gamma")
    assert mine == first and cached_alpha > 0


def test_a_model_with_a_projector_is_evicted_and_sees_again(
    vlm_lm_path: Path, mmproj: dict[str, Path], smollm_gguf: Path, tmp_path: Path
) -> None:
    """With room for two models (the default one stays), a second text model's request
    evicts the vision model, projector and all; the next image request loads it again and
    answers as before."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "seer.gguf").symlink_to(vlm_lm_path)
    (models / "mmproj-seer.gguf").symlink_to(mmproj["f32"])
    (models / "other.gguf").symlink_to(smollm_gguf)
    srv = start_server(tmp_path, *ARGS, "--models-dir", str(models), "--max-loaded-models", "2")
    try:
        want, _ = answer(srv.url, body(51, "seer"))
        text = {"model": "other", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=text, timeout=300)
        assert r.status_code == 200, r.text
        loaded = {m["name"] for m in httpx.get(f"{srv.url}/api/ps", timeout=30).json()["models"]}
        assert "seer" not in loaded and "other" in loaded
        assert answer(srv.url, body(51, "seer"))[0] == want
        loaded = {m["name"] for m in httpx.get(f"{srv.url}/api/ps", timeout=30).json()["models"]}
        assert "seer" in loaded and "other" not in loaded
    finally:
        stop_server(srv)
