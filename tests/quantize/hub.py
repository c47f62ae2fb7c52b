"""Test helper: a local stand-in for the Hugging Face hub, serving directories as repositories."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    """A served repository: one commit of a directory's files."""

    root: Path
    sha: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class FakeHub:
    """Repositories by id, and a log of request paths (to see what was downloaded)."""

    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def add(self, repo_id: str, root: Path) -> Repo:
        """Serve every file under root as repo_id at a commit derived from the file names."""
        files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
        sha = hashlib.sha1(("\n".join([repo_id, *files])).encode()).hexdigest()
        self.repos[repo_id] = repo = Repo(root, sha, files)
        return repo


def _etag(path: Path) -> str:
    return hashlib.sha256(f"{path}:{path.stat().st_size}".encode()).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _json(self, data: object, status: int = 200) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _not_found(self, what: str) -> None:
            body = json.dumps({"error": f"{what} not found"}).encode()
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            if path.startswith("/api/models/"):
                rest = path[len("/api/models/") :]
                for repo_id, repo in hub.repos.items():
                    if rest == repo_id or rest.startswith(repo_id + "/revision/"):
                        siblings = [{"rfilename": f} for f in repo.files]
                        return self._json({"id": repo_id, "sha": repo.sha, "siblings": siblings})
                    if rest.startswith(repo_id + "/tree/"):
                        tree = [
                            {
                                "type": "file",
                                "path": f,
                                "size": p.stat().st_size,
                                "oid": _etag(p)[:40],
                            }
                            for f, p in repo.files.items()
                        ]
                        return self._json(tree)
                return self._not_found("repository")
            for repo_id, repo in hub.repos.items():
                prefix = f"/{repo_id}/resolve/"
                if path.startswith(prefix):
                    _rev, _, name = path[len(prefix) :].partition("/")
                    file = repo.files.get(name)
                    if file is None:
                        return self._not_found("entry")
                    return self._file(repo, file, head)
            return self._not_found("repository")

        def _file(self, repo: Repo, file: Path, head: bool) -> None:
            size = file.stat().st_size
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{_etag(file)}"')
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if head:
                return
            with open(file, "rb") as fh:
                fh.seek(start)
                while chunk := fh.read(1 << 20):
                    self.wfile.write(chunk)

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

    return Handler


@contextmanager
def serve() -> Iterator[FakeHub]:
    """Run a FakeHub on 127.0.0.1 at a free port for the duration of the block."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
