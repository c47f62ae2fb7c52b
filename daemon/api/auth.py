"""API keys: a guard on every API route and the `api_key` dependency handlers can ask for."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.handlers import BaseRouteHandler

from daemon.api.watch import current
from daemon.config import Settings
from daemon.errors import Unauthorized

_STATE_KEY = "edged_api_key"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(settings: Settings) -> list[str]:
    """Keys from EDGED_API_KEYS (comma-separated) and --api-key-file (one per line, # comments)."""
    keys = [k.strip() for k in settings.api_keys.split(",")]
    if settings.api_key_file is not None:
        for line in settings.api_key_file.read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith("#"):
                keys.append(line.strip())
    return [k for k in keys if k]


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the daemon reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class ApiKeys:
    """The configured keys, kept as SHA-256 digests and matched in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (no keys = no authentication)."""
        return bool(self._digests)

    def identify(self, presented: str | None) -> str:
        """The key's identity (hex SHA-256) if `presented` is a configured key; else 401."""
        if presented is None:
            raise Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
            )
        # Equal-length digests, and every key compared: timing reveals neither key nor match.
        candidate = _digest(presented)
        match = False
        for d in self._digests:
            match |= hmac.compare_digest(candidate, d)
        if not match:
            raise Unauthorized("invalid API key")
        return candidate.hex()


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a client sent as `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    auth = connection.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = connection.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def api_key_guard(keys: ApiKeys, public_paths: frozenset[str]) -> Any:
    """A Litestar guard: every route but `public_paths` needs a configured key."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if not keys.enabled or connection.scope["path"] in public_paths:
            return
        identity = keys.identify(presented_key(connection))
        connection.state[_STATE_KEY] = identity
        record = current.get()
        if record is not None:  # the engine schedules fairly between owners
            record.owner = identity

    return guard


def provide_api_key(request: Request[Any, Any, Any]) -> str | None:
    """Dependency `api_key`: the caller's key identity (hex SHA-256), or None when auth is off.

    Declare `api_key: NamedDependency[str | None]` in a handler to get it; the guard has
    already refused requests without a valid key, so a handler never sees an unauthenticated
    caller when keys are configured. Use it to scope per-client state (e.g. the request_id store).
    """
    value = request.state.get(_STATE_KEY)
    return value if isinstance(value, str) else None
