"""A real HTTP server on 127.0.0.1 serving a test image, and the ways a fetch can go wrong:
/ok.png, /big.png, /missing, /slow, /hop (a redirect to /ok.png), /away (a redirect to the
same server under another host name)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.media.tiny_vlm import png_bytes, sample_image

PNG = png_bytes(sample_image(seed=81))


class _Images(BaseHTTPRequestHandler):
    """/ok.png, /big.png (over a small limit), /missing, /slow, /hop (to /ok.png), /away
    (to the same server under another host name)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/ok.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, PNG * 8)
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif self.path == "/hop":
            self._redirect(f"http://127.0.0.1:{port}/ok.png")
        elif self.path == "/away":
            self._redirect(f"http://localhost:{port}/ok.png")
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _redirect(self, to: str) -> None:
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def serve_images() -> Iterator[str]:
    """The server's host:port while the block runs."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
