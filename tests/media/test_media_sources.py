"""Images by reference: file:// URLs under --media-dir and http(s) URLs of the hosts
--allow-remote-media names; nothing else is read. The resolver against a real folder and a
real local HTTP server, then a real daemon through the official SDKs."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from pathlib import Path

import anthropic
import openai
import pytest

from daemon.core.choices import Policy
from daemon.core.media import image_from_url
from daemon.core.media_sources import resolve_media
from daemon.core.request import MEDIA_MARKER, ChatRequest, Message
from daemon.errors import InvalidRequest
from tests.conftest import Server
from tests.media.image_host import PNG

QUESTION = "What is in this picture?"


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(PNG)
    (root / "sub" / "b.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    return root


def resolve(url: str, policy: Policy) -> bytes:
    part = image_from_url(url, "messages")
    req = ChatRequest(messages=(Message("user", MEDIA_MARKER + "x", media=(part,)),))
    out = asyncio.run(resolve_media(req, policy, "messages"))
    return out.media[0].data


def refused(url: str, policy: Policy, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as info:
        resolve(url, policy)
    assert info.value.param == "messages"


def test_files_under_the_media_dir_and_nowhere_else(media_dir: Path) -> None:
    policy = Policy(media_dir=media_dir)
    assert resolve("file://a.png", policy) == PNG
    assert resolve("file://sub/b.png", policy) == PNG
    assert resolve("file://sub%2Fb.png", policy) == PNG
    assert resolve(f"file://{media_dir / 'a.png'}", policy) == PNG
    for url in (
        "file://../secret.png",
        "file://sub/../../secret.png",
        f"file://{media_dir.parent / 'secret.png'}",
        "file://link.png",  # a symlink leading out of the folder
        "file:///etc/passwd",
        "file://nothing.png",
        "file://sub",
    ):
        refused(url, policy, "no such image file")
    refused("file://", policy, "names no file")
    refused("file://a.png", Policy(), "--media-dir")
    refused("file://a.png", replace(policy, max_image_bytes=10), "limit")


def test_remote_images_from_allowed_hosts_only(images_host: str) -> None:
    policy = Policy(remote_media=(images_host,), max_image_bytes=len(PNG) * 2)
    base = f"http://{images_host}"
    assert resolve(f"{base}/ok.png", policy) == PNG
    assert resolve(f"{base}/hop", policy) == PNG  # a redirect within allowed hosts
    assert resolve(f"{base}/ok.png", Policy(remote_media=("*",))) == PNG
    refused(f"{base}/ok.png", Policy(), "--allow-remote-media")
    refused(f"{base}/away", policy, "not in --allow-remote-media")  # redirected elsewhere
    refused(f"{base}/missing", policy, "answered 404")
    refused(f"{base}/big.png", policy, "limit")
    refused(f"{base}/slow", replace(policy, remote_media_timeout=0.5), "within")
    refused("http://localhost:1/ok.png", Policy(remote_media=("localhost:1",)), "fetched")
    refused(f"http://{images_host.replace('127.0.0.1', 'localhost')}/ok.png", policy, "not in")


def test_every_dialect_reads_an_image_by_reference(keyed_vlm: Server, images_host: str) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client = openai.OpenAI(base_url=f"{keyed_vlm.url}/v1", api_key="epsilon", max_retries=0)

    def chat(url: str) -> str:
        resp = client.chat.completions.create(
            model="lm",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
            max_tokens=6,
            temperature=0,
        )
        return resp.choices[0].message.content or ""

    want = chat(data_url)
    assert chat("file://cat.png") == want
    assert chat(f"http://{images_host}/ok.png") == want

    claude = anthropic.Anthropic(base_url=keyed_vlm.url, api_key="epsilon", max_retries=0)
    msg = claude.messages.create(
        model="lm",
        max_tokens=6,
        extra_body={"temperature": 0},  # the SDK leaves sampling knobs to extra_body
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": f"http://{images_host}/ok.png"},
                    },
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    assert "".join(b.text for b in msg.content if b.type == "text") == want

    resp = client.responses.create(
        model="lm",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "file://cat.png"},
                    {"type": "input_text", "text": QUESTION},
                ],
            }
        ],
        max_output_tokens=6,
        temperature=0,
    )
    assert resp.output_text == want

    with pytest.raises(openai.BadRequestError, match="no such image file"):
        chat("file://../models/x.png")
    with pytest.raises(openai.BadRequestError, match="not in --allow-remote-media"):
        chat("http://example.com/cat.png")


def test_references_are_refused_without_the_operators_word(vlm_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="none", max_retries=0)
    for url, says in (("file://cat.png", "--media-dir"), ("http://a.b/c.png", "--allow-remote")):
        with pytest.raises(openai.BadRequestError, match=says):
            client.chat.completions.create(
                model="lm",
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
                max_tokens=1,
            )
