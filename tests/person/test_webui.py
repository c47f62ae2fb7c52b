"""The chat page at `/` in a real headless browser (Debian's chromium driven by Playwright):
load, pick the model, send, watch the answer stream as Markdown, stop a long answer, reload
and find the conversation; a screenshot is kept as an artifact."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from daemon.config import embedded_model_path
from tests.conftest import Server, start_server, stop_server
from tests.person.conftest import SMALL

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEFAULT = embedded_model_path().stem

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _artifact(page: object, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    page.screenshot(path=str(out), full_page=True)  # type: ignore[attr-defined]
    keep = os.environ.get("EDGED_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(keep) / name)
    print(f"screenshot: {out}")
    return out


def test_chat_page(browser: object, fresh: Server, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(fresh.url + "/")
    page.wait_for_selector(f"#model option[value='{DEFAULT}']", state="attached")
    page.select_option("#model", DEFAULT)
    page.click("#toggle-settings")
    page.fill("#system", "You are a concise assistant.")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "24")
    page.dispatch_event("#max_tokens", "change")

    # 1. A message: the answer streams in and is rendered (Markdown -> HTML), with stats.
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.streaming", state="attached")
    page.wait_for_selector(".msg.assistant:not(.streaming) .stats")
    answer = page.locator(".msg.assistant .content").last
    assert answer.inner_text().strip()
    assert answer.locator("p, pre, ul, ol, h1, h2, h3").count() >= 1
    stats = page.locator(".msg.assistant .stats").last.inner_text()
    assert "tok/s" in stats and "first token" in stats and "tokens" in stats

    # 2. A long answer, stopped halfway: Stop aborts the fetch, the page keeps what came.
    page.fill("#max_tokens", "900")
    page.dispatch_event("#max_tokens", "change")
    page.fill("#input", "Write a very long story about a lighthouse keeper.")
    page.click("#send")
    page.wait_for_function(
        "() => { const m = document.querySelector('.msg.assistant.streaming .content');"
        " return m && m.textContent.length > 20; }"
    )
    page.click("#stop")
    page.wait_for_selector(".msg.assistant:not(.streaming) >> nth=1")
    last = page.locator(".msg.assistant").last
    assert "stopped" in last.locator(".stats").inner_text()
    assert last.locator(".content").inner_text().strip()
    assert page.is_visible("#send") and not page.is_visible("#stop")

    # 3. Markdown, escaped: a conversation with code, emphasis and would-be HTML.
    hostile = (
        "# Title\n\nSome **bold** and `x < y`.\n\n```python\nprint('<b>hi</b>')\n```\n\n"
        "<img src=x onerror=alert(1)> [link](javascript:alert(2)) [ok](https://example.org)"
    )
    page.evaluate(
        """(text) => {
            const all = JSON.parse(localStorage.getItem('edged.conversations'));
            all.push({id: 'md', title: 'Markdown check', model: 'm', system: '', updated: 1,
                      messages: [{role: 'user', content: 'show me'},
                                 {role: 'assistant', content: text}]});
            localStorage.setItem('edged.conversations', JSON.stringify(all));
        }""",
        hostile,
    )

    # 4. Reload: the conversations are still listed and open again.
    page.reload()
    page.wait_for_selector("#conversations li")
    titles = page.locator("#conversations li button.open").all_inner_texts()
    assert "What is the capital of France?" in titles and "Markdown check" in titles
    page.click("#conversations li button.open >> text=What is the capital of France?")
    assert page.locator(".msg.user").count() == 2
    assert page.locator(".msg.assistant .stats").count() == 2
    _artifact(page, tmp_path, "chat-page.png")

    page.click("#conversations li button.open >> text=Markdown check")
    md = page.locator(".msg.assistant .content").last
    assert md.locator("h1").inner_text() == "Title"
    assert md.locator("strong").inner_text() == "bold"
    assert md.locator("pre code.language-python").inner_text() == "print('<b>hi</b>')"
    assert md.locator("img").count() == 0 and md.locator("b").count() == 0
    assert "<img src=x onerror=alert(1)>" in md.inner_text()
    assert md.locator("a").count() == 1
    assert md.locator("a").get_attribute("href") == "https://example.org"
    _artifact(page, tmp_path, "chat-markdown.png")
    assert not dialogs and not errors, (dialogs, errors)
    page.close()


def test_page_without_key_then_with_key(browser: object, tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, *SMALL, env={"EDGED_API_KEYS": "sekrit", "EDGED_MODELS_DIR": str(tmp_path)}
    )
    try:
        for path in ("/", "/ui/app.js", "/ui/markdown.js", "/ui/style.css"):
            assert httpx.get(srv.url + path).status_code == 200, path
        assert httpx.get(srv.url + "/ui/nothing.js").status_code == 401
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        # The admin routes want a key like every API route.
        assert httpx.get(srv.url + "/admin/ps").status_code == 401
        assert httpx.post(srv.url + "/admin/unload", json={"model": DEFAULT}).status_code == 401
        auth = {"Authorization": "Bearer sekrit"}
        assert httpx.get(srv.url + "/admin/ps", headers=auth).status_code == 200
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(srv.url + "/")
        page.wait_for_selector("#key-label:not([hidden])")
        assert "API key" in page.inner_text("#status")
        page.fill("#api-key", "sekrit")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector(f"#model option[value='{DEFAULT}']", state="attached")
        assert (
            json.loads(page.evaluate("JSON.stringify(localStorage.getItem('edged.apiKey'))"))
            == "sekrit"
        )
        page.close()
    finally:
        stop_server(srv)
