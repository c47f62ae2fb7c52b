"""Talking to the running daemon from the CLI: where it is, its key, and a clear message
when nobody answers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx


class NoDaemon(Exception):
    """Nothing answers at the daemon's address."""


def add_daemon_flags(p: argparse.ArgumentParser) -> None:
    """--url and --api-key, defaulting from the same environment `edged serve` reads."""
    p.add_argument(
        "--url",
        default=None,
        help="the daemon (default: $EDGED_URL, else http://$EDGED_HOST:$EDGED_PORT "
        "= http://127.0.0.1:8000)",
    )
    p.add_argument("--api-key", default=None, help="API key (default: $EDGED_API_KEY, else none)")


def daemon_url(args: argparse.Namespace) -> str:
    """Where the daemon listens."""
    if args.url:
        return str(args.url).rstrip("/")
    if os.environ.get("EDGED_URL"):
        return os.environ["EDGED_URL"].rstrip("/")
    host = os.environ.get("EDGED_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # bound to every address: this machine reaches it on loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('EDGED_PORT', '8000')}"


def client(args: argparse.Namespace, timeout: float | None = 30.0) -> httpx.Client:
    """An HTTP client for the daemon, carrying the key if one is set."""
    key = args.api_key or os.environ.get("EDGED_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=daemon_url(args), headers=headers, timeout=timeout)


def no_daemon_message(url: str) -> str:
    return (
        f"edged: no daemon answers at {url}.\n"
        "Start one with `edged serve` (in another terminal, or as a service), "
        "or point at it with --url / EDGED_URL."
    )


def request(http: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request; NoDaemon when the connection is refused or the host is unknown."""
    try:
        return http.request(method, path, **kw)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise NoDaemon(str(http.base_url)) from exc


def error_text(resp: httpx.Response) -> str:
    """The error message of a dialect-shaped error body, or the status line."""
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}"
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return f"HTTP {resp.status_code}"


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code
