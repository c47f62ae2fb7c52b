"""The chat page attaches images (picked, pasted or dropped), shows them, and sends them:
in a real headless chromium against the tiny vision model's daemon. The page's answer is
the API's greedy answer to the same image and words (the daemon runs --exact)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.media.tiny_vlm import png_bytes, sample_image
from tests.person import chromium

sync_api = chromium.require()

QUESTION = "What is in this picture?"
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium.launched(sync_api) as b:
        yield b


def api_answer(srv: Server, model: str, png: bytes, text: str) -> tuple[str, int]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    content: list[dict[str, object]] = [{"type": "image_url", "image_url": {"url": url}}]
    if text:
        content.append({"type": "text", "text": text})
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "top_p": 1,
        "max_tokens": MAX_TOKENS,
    }
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["choices"][0]["message"]["content"], out["usage"]["prompt_tokens"]


def _drop_or_paste(page: object, event: str, png: bytes) -> None:
    """A paste into the message box, or a drop on the composer, carrying a PNG file."""
    page.evaluate(  # type: ignore[attr-defined]
        """([event, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "shot.png", { type: "image/png" }));
            const target = event === "paste" ? document.getElementById("input")
                                             : document.getElementById("composer");
            const init = { bubbles: true, cancelable: true };
            const ev = event === "paste"
                ? new ClipboardEvent("paste", { clipboardData: dt, ...init })
                : new DragEvent("drop", { dataTransfer: dt, ...init });
            target.dispatchEvent(ev);
        }""",
        [event, base64.b64encode(png).decode()],
    )


def test_attach_show_send_and_keep_an_image(
    browser: object, vlm_server: Server, tmp_path: Path
) -> None:
    model = httpx.get(f"{vlm_server.url}/v1/models", timeout=60).json()["data"][0]["id"]
    png = png_bytes(sample_image(seed=11))
    picked = tmp_path / "picked.png"
    picked.write_bytes(png)
    want, with_image = api_answer(vlm_server, model, png, QUESTION)
    text_only = httpx.post(
        f"{vlm_server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1},
        timeout=300,
    ).json()["usage"]["prompt_tokens"]
    assert with_image > text_only  # the image's positions are part of the prompt

    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(vlm_server.url + "/")
        page.wait_for_selector(f"#model option[value='{model}']", state="attached")
        # The model sees: the attach control shows.
        page.wait_for_selector("#attach-label", state="visible")
        page.click("#toggle-settings")
        page.fill("#temperature", "0")
        page.fill("#top_p", "1")
        page.fill("#max_tokens", str(MAX_TOKENS))

        # Picked, pasted and dropped images all wait as thumbnails; one is removed again.
        page.set_input_files("#attach", str(picked))
        page.wait_for_selector("#attachments img.thumb")
        _drop_or_paste(page, "paste", png)
        _drop_or_paste(page, "drop", png)
        page.wait_for_function("document.querySelectorAll('#attachments img').length === 3")
        page.click("#attachments figure:nth-child(3) button")
        page.click("#attachments figure:nth-child(2) button")
        assert page.locator("#attachments img").count() == 1

        page.fill("#input", QUESTION)
        page.click("#send")
        page.wait_for_selector(".msg.assistant:not(.streaming) .stats")
        assert page.locator("#attachments img").count() == 0
        shown = page.locator(".msg.user .images img")
        assert shown.count() == 1
        assert shown.get_attribute("src").startswith("data:image/png;base64,")
        assert page.inner_text("#status") == ""
        # What the page sent is what the API answers to that image and question.
        got = page.inner_text(".msg.assistant .content").strip()
        assert got == want.strip()

        # The conversation, image included, is still there after a reload.
        page.reload()
        page.wait_for_selector("#conversations li button.open")
        page.click("#conversations li button.open")
        page.wait_for_selector(".msg.user .images img")
        page.screenshot(path=str(tmp_path / "chat-image.png"), full_page=True)
    finally:
        page.close()


def test_a_model_without_vision_offers_no_attach(browser: object, vlm_server: Server) -> None:
    """The attach control follows the model picked: shown for one that sees, hidden (and
    pasted images refused with a message) for one that does not."""
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(vlm_server.url + "/")
        page.wait_for_selector("#attach-label", state="visible")
        # Pretend the picked model lost its projector: the page reads /v1/models again.
        page.evaluate(
            """() => {
                const sel = document.getElementById("model");
                const opt = document.createElement("option");
                opt.value = "blind"; opt.textContent = "blind";
                sel.appendChild(opt);
                sel.value = "blind";
                sel.dispatchEvent(new Event("change"));
            }"""
        )
        page.wait_for_selector("#attach-label", state="hidden")
        _drop_or_paste(page, "paste", png_bytes(sample_image(seed=12)))
        assert page.locator("#attachments img").count() == 0
        assert "does not take images" in page.inner_text("#status")
    finally:
        page.close()
