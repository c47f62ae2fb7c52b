"""The chat page at `/` in a real headless browser (Debian's chromium driven by Playwright):
load, pick the model, send, watch the answer stream as Markdown, stop a long answer, reload
and find the conversation; a screenshot is kept as an artifact. The API key stays out of
localStorage (memory, or sessionStorage on opt-in), and the Markdown renderer leaves link URLs
whole (no emphasis spliced into an href) and drops unsafe schemes."""

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
from tests.person import chromium
from tests.person.conftest import SMALL

DEFAULT = embedded_model_path().stem

sync_api = chromium.require()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium.launched(sync_api) as b:
        yield b


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


KEY = "sekrit-7f3a9c"  # unusual enough that finding it anywhere in storage means a leak


def _storage(page: object) -> tuple[str, str]:
    """Everything the origin keeps in localStorage and sessionStorage, as JSON text."""
    local, session = page.evaluate(  # type: ignore[attr-defined]
        "() => [JSON.stringify(localStorage), JSON.stringify(sessionStorage)]"
    )
    return local, session


def test_page_without_key_then_with_key(browser: object, tmp_path: Path) -> None:
    srv = start_server(
        tmp_path, *SMALL, env={"EDGED_API_KEYS": KEY, "EDGED_MODELS_DIR": str(tmp_path)}
    )
    try:
        for path in ("/", "/ui/app.js", "/ui/markdown.js", "/ui/style.css"):
            assert httpx.get(srv.url + path).status_code == 200, path
        # An unknown asset is never served (404 from the public asset route, or 401 where only
        # the known files are public).
        assert httpx.get(srv.url + "/ui/nothing.js").status_code in (401, 404)
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        # The admin routes want a key like every API route, and one with the admin scope: a
        # key from EDGED_API_KEYS (no scopes given) may only do inference.
        assert httpx.get(srv.url + "/admin/ps").status_code == 401
        assert httpx.post(srv.url + "/admin/unload", json={"model": DEFAULT}).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(srv.url + "/v1/models", headers=auth).status_code == 200
        assert httpx.get(srv.url + "/admin/ps", headers=auth).status_code == 403
        page = browser.new_page()  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.wait_for_selector("#key-label:not([hidden])")
        assert "API key" in page.inner_text("#status")
        assert not page.is_checked("#remember-key")  # memory only unless the person opts in

        # 1. A key typed (no opt-in), a message sent with it: the key is in no storage at all.
        page.fill("#api-key", KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector(f"#model option[value='{DEFAULT}']", state="attached")
        # The page settles (the key's status line gone, the model picked) before the click:
        # on a loaded machine a click during that re-layout can land beside the button.
        page.wait_for_function(
            "document.getElementById('status').textContent === ''"
            " && document.getElementById('model').value !== ''"
        )
        page.click("#toggle-settings")
        page.wait_for_selector("#settings", state="visible")
        page.fill("#max_tokens", "4")
        page.dispatch_event("#max_tokens", "change")
        page.fill("#input", "Say hi.")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant:not(.streaming) .stats")
        assert page.inner_text("#status") == ""  # the chat request carried the key
        local, session = _storage(page)
        assert "Say hi." in local  # the conversation is kept ...
        assert KEY not in local and KEY not in session, (local, session)  # ... the key is not

        # 2. A reload without the opt-in forgets the key: the daemon asks for it again.
        page.reload()
        page.wait_for_selector("#key-label:not([hidden])")
        assert page.input_value("#api-key") == ""
        assert "API key" in page.inner_text("#status")
        assert page.locator("#model option").count() == 0

        # 3. With "remember on this device": in sessionStorage (this tab) only, and a reload
        #    keeps it; unticking forgets it again.
        page.fill("#api-key", KEY)
        page.check("#remember-key")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector(f"#model option[value='{DEFAULT}']", state="attached")
        local, session = _storage(page)
        assert KEY not in local, local
        assert page.evaluate("sessionStorage.getItem('edged.apiKey')") == KEY
        page.reload()
        page.wait_for_selector(f"#model option[value='{DEFAULT}']", state="attached")
        assert page.input_value("#api-key") == KEY and page.is_checked("#remember-key")
        assert KEY not in _storage(page)[0]
        page.uncheck("#remember-key")
        assert page.evaluate("sessionStorage.getItem('edged.apiKey')") is None
        assert KEY not in "".join(_storage(page))

        # 4. A key an older page left in localStorage is deleted on load, not used.
        page.evaluate(f"localStorage.setItem('edged.apiKey', {json.dumps(KEY)})")
        page.reload()
        page.wait_for_selector("#key-label:not([hidden])")
        assert page.evaluate("localStorage.getItem('edged.apiKey')") is None
        assert page.input_value("#api-key") == ""
        assert "API key" in page.inner_text("#status")
        assert KEY not in "".join(_storage(page))
        assert not errors, errors
        page.close()
    finally:
        stop_server(srv)


# Markdown the page renders with its own renderer (window.EdgedMarkdown.render) into a
# detached element; what comes back is read from the DOM, as the browser parsed it.
_RENDER = """(sources) => sources.map((src) => {
    const div = document.createElement('div');
    div.innerHTML = window.EdgedMarkdown.render(src);
    const attrs = [];
    for (const el of div.querySelectorAll('*'))
        for (const a of el.attributes) attrs.push([el.tagName.toLowerCase(), a.name, a.value]);
    return {
        html: div.innerHTML,
        text: div.textContent,
        links: [...div.querySelectorAll('a')].map((a) => ({
            href: a.getAttribute('href'), text: a.textContent,
            target: a.getAttribute('target'), rel: a.getAttribute('rel'),
            strong: [...a.querySelectorAll('strong')].map((e) => e.textContent),
            em: [...a.querySelectorAll('em')].map((e) => e.textContent),
            del: [...a.querySelectorAll('del')].map((e) => e.textContent),
            code: [...a.querySelectorAll('code')].map((e) => e.textContent),
        })),
        tags: [...div.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),
        attrs,
    };
})"""

# (source, the one link's exact href, its text, its strong/em/del/code texts)
_LINKS = [
    ("[x](https://e.com/a_b_c_d)", "https://e.com/a_b_c_d", "x", {}),
    (
        "[**bold** label](https://e.com/x**y**z)",
        "https://e.com/x**y**z",
        "bold label",
        {"strong": ["bold"]},
    ),
    ("[t](https://e.com/~~q~~)", "https://e.com/~~q~~", "t", {}),
    (
        "[_it_ and ~~gone~~](https://e.com/?q=a_b_&r='s'&t=\"u\"#__f__)",
        "https://e.com/?q=a_b_&r='s'&t=\"u\"#__f__",
        "it and gone",
        {"em": ["it"], "del": ["gone"]},
    ),
    ("[`a_b_c`](https://e.com/*s*)", "https://e.com/*s*", "a_b_c", {"code": ["a_b_c"]}),
    ("see **[y](https://e.com/__u__)** now", "https://e.com/__u__", "y", {}),
    ("# Head [h](https://e.com/_h_)", "https://e.com/_h_", "h", {}),
    ("- item [l](https://e.com/__x__)\n  more", "https://e.com/__x__", "l", {}),
    ("1. [n](mailto:a_b_c@e.com)", "mailto:a_b_c@e.com", "n", {}),
    ("| a | b |\n|---|---|\n| [q](https://e.com/*x*) | `y` |", "https://e.com/*x*", "q", {}),
    ("> quoted [z](https://e.com/~~z~~_z_)", "https://e.com/~~z~~_z_", "z", {}),
    # Quotes in a URL stay inside the attribute value: no attribute of their own.
    ('[x](https://e.com/"onmouseover="alert(1))', 'https://e.com/"onmouseover="alert(1', "x", {}),
]
_INERT = [
    "[x](javascript:alert(1))",
    "[x](JavaScript:alert(document.domain))",
    "[x](data:text/html,<script>alert(1)</script>)",
    "[x](vbscript:msgbox)",
    "[x](https://e.com/`code`)",
    "<a href=javascript:alert(1)>y</a> <script>alert(2)</script>",
]


def test_markdown_links_keep_their_urls(browser: object, fresh: Server) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(fresh.url + "/")
    page.wait_for_function("() => window.EdgedMarkdown && window.EdgedMarkdown.render")

    results = page.evaluate(_RENDER, [src for src, *_ in _LINKS])
    for (src, href, text, marks), got in zip(_LINKS, results, strict=True):
        assert len(got["links"]) == 1, (src, got["html"])
        link = got["links"][0]
        # The attribute is the URL, byte for byte: no <em>/<strong>/<del> spliced into it.
        assert link["href"] == href, (src, got["html"])
        assert link["text"] == text, (src, got["html"])
        assert link["target"] == "_blank" and link["rel"] == "noopener noreferrer"
        for kind in ("strong", "em", "del", "code"):
            assert link[kind] == marks.get(kind, []), (src, kind, got["html"])
        for tag, name, value in got["attrs"]:
            assert name in ("href", "target", "rel"), (src, tag, name, value)
            assert "<" not in value and ">" not in value, (src, tag, name, value)
    # Emphasis around a link, and the list/table/heading around it, still render.
    assert results[5]["tags"][:3] == ["p", "strong", "a"], results[5]["html"]
    assert "h1" in results[6]["tags"] and "br" in results[7]["tags"]
    assert "ol" in results[8]["tags"] and "td" in results[9]["tags"]
    assert "blockquote" in results[10]["tags"]

    inert = page.evaluate(_RENDER, _INERT)
    for src, got in zip(_INERT, inert, strict=True):
        assert got["links"] == [], (src, got["html"])
        assert "script" not in got["tags"], (src, got["html"])
        for tag, name, value in got["attrs"]:
            assert not name.startswith("on") and name != "href", (src, tag, name, value)
    assert inert[0]["text"] == "[x](javascript:alert(1))"
    assert "<script>alert(2)</script>" in inert[-1]["text"]

    # And in the page itself: an answer with such links shows them whole and clickable-safe.
    page.evaluate(
        """(text) => {
            localStorage.setItem('edged.conversations', JSON.stringify([{id: 'links',
                title: 'Links', model: 'm', system: '', updated: 1,
                messages: [{role: 'user', content: 'links?'},
                           {role: 'assistant', content: text}]}]));
        }""",
        "\n\n".join(src for src, *_ in _LINKS[:3]) + "\n\n" + _INERT[0],
    )
    page.reload()
    page.click("#conversations li button.open >> text=Links")
    anchors = page.locator(".msg.assistant .content a")
    assert [anchors.nth(i).get_attribute("href") for i in range(anchors.count())] == [
        href for _, href, *_ in _LINKS[:3]
    ]
    assert page.locator(".msg.assistant .content a strong").inner_text() == "bold"
    assert not dialogs and not errors, (dialogs, errors)
    page.close()
