"""The chat page at `/`: static files shipped in the package (daemon/web), no build step.

The page and its assets are public (a browser cannot send a key before the page is there);
the API calls the page makes carry the key the person types into it.
"""

from __future__ import annotations

from importlib.resources import files

from litestar import Response, get
from litestar.params import FromPath

_WEB = files("daemon") / "web"
_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# No inline scripts, nothing from elsewhere: the page talks to this daemon only.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _asset(name: str) -> Response[bytes]:
    body = (_WEB / name).read_bytes()
    return Response(
        body,
        media_type=_TYPES[name],
        headers={
            "Content-Security-Policy": _CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@get("/", sync_to_thread=False, include_in_schema=False, opt={"scope": "public"})
def index() -> Response[bytes]:
    """The chat page."""
    return _asset("index.html")


@get("/ui/{name:str}", sync_to_thread=False, include_in_schema=False, opt={"scope": "public"})
def asset(name: FromPath[str]) -> Response[bytes]:
    """The page's scripts and styles (only the known files: no path walking)."""
    if name not in _TYPES or name == "index.html":
        return Response(b"not found", status_code=404, media_type="text/plain")
    return _asset(name)


handlers = [index, asset]
