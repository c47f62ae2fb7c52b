"""API keys and scopes: who may call which route, and the `api_key`/`caller` dependencies.

A key carries scopes: `inference` (generate, embed, rerank, tokenize, its own stored state)
and `admin` (pull, delete, copy, load, unload, rescan, `/admin/*`, slot inspection, paths).
A key listed without scopes may only do inference; `admin` is always granted explicitly.
Routes say what they need with `opt={"scope": ...}` on the handler or router (`ADMIN`,
`PUBLIC`); everything else needs `inference`.

The key file holds one key per line (`#` comments):

    <key or sha256:<64 hex>> [scopes=inference,admin] [name=label] [max_concurrency=N]

A `sha256:` entry is the key's SHA-256 digest, so the file need not hold the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.handlers import BaseRouteHandler

from daemon.config import Settings
from daemon.core.watch import current
from daemon.errors import Forbidden, Unauthorized

INFERENCE = "inference"
ADMIN = "admin"
PUBLIC = "public"  # a route anyone may call (what it shows may still depend on the caller)
SCOPES = frozenset({INFERENCE, ADMIN})
EVERY_SCOPE = SCOPES

_STATE_KEY = "edged_caller"
_HEX = re.compile(r"^[0-9a-f]{64}$")
_OPTIONS = ("scopes", "name", "max_concurrency")


class KeyFileError(ValueError):
    """A key file line that cannot be read (the message never contains the key)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyEntry:
    """One configured key: its SHA-256 digest, its scopes and its limits."""

    digest: bytes
    scopes: frozenset[str] = frozenset({INFERENCE})
    name: str = ""
    max_concurrency: int | None = None

    @property
    def identity(self) -> str:
        """What state is kept under (hex SHA-256 of the key)."""
        return self.digest.hex()


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's identity ("" without auth) and the scopes it holds."""

    identity: str
    scopes: frozenset[str]
    name: str = ""
    max_concurrency: int | None = None

    def may(self, scope: str) -> bool:
        """Whether this caller holds `scope` (PUBLIC is everyone's)."""
        return scope == PUBLIC or scope in self.scopes

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


ANONYMOUS = Caller("", frozenset())


def parse_key_line(line: str, where: str = "") -> KeyEntry | None:
    """A key file line as a KeyEntry; None for blank and comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    secret, *options = text.split()
    if secret.lower().startswith("sha256:"):
        hexed = secret[7:].lower()
        if not _HEX.match(hexed):
            raise KeyFileError(f"{where}: sha256: needs 64 hex digits")
        digest = bytes.fromhex(hexed)
    else:
        digest = _digest(secret)
    fields: dict[str, str] = {}
    for opt in options:
        name, eq, value = opt.partition("=")
        if not eq or name not in _OPTIONS or name in fields:
            raise KeyFileError(
                f"{where}: unknown or repeated option `{name}` ({', '.join(_OPTIONS)})"
            )
        fields[name] = value
    scopes = frozenset({INFERENCE})
    if "scopes" in fields:
        scopes = frozenset(s for s in fields["scopes"].split(",") if s)
        unknown = scopes - SCOPES
        if unknown or not scopes:
            raise KeyFileError(f"{where}: scopes must be among {', '.join(sorted(SCOPES))}")
    limit = None
    if "max_concurrency" in fields:
        try:
            limit = int(fields["max_concurrency"])
        except ValueError:
            limit = 0
        if limit < 1:
            raise KeyFileError(f"{where}: max_concurrency must be a whole number >= 1")
    return KeyEntry(digest, scopes, fields.get("name", ""), limit)


def load_api_keys(settings: Settings) -> list[KeyEntry]:
    """Keys from EDGED_API_KEYS (comma-separated, inference only) and --api-key-file.

    Raises OSError when the file cannot be read and KeyFileError when a line is malformed.
    """
    entries = [KeyEntry(_digest(k.strip())) for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_key_file is not None:
        text = settings.api_key_file.read_text(encoding="utf-8")
        for n, line in enumerate(text.splitlines(), 1):
            entry = parse_key_line(line, f"{settings.api_key_file.name} line {n}")
            if entry is not None:
                entries.append(entry)
    merged: dict[bytes, KeyEntry] = {}
    for e in entries:  # the same key listed twice holds the union of its scopes
        old = merged.get(e.digest)
        merged[e.digest] = (
            e
            if old is None
            else KeyEntry(
                e.digest,
                old.scopes | e.scopes,
                old.name or e.name,
                old.max_concurrency or e.max_concurrency,
            )
        )
    return list(merged.values())


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the daemon reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class ApiKeys:
    """The configured keys, matched by SHA-256 digest in constant time; replaceable (SIGHUP).

    `open_scopes` is what a caller holds when no key is configured: every scope on a
    loopback bind (the workstation's single user), inference only on a wider one.
    """

    def __init__(
        self, keys: Iterable[KeyEntry | str], open_scopes: frozenset[str] = EVERY_SCOPE
    ) -> None:
        self.open_scopes = open_scopes
        self._entries: tuple[KeyEntry, ...] = ()
        self.replace(keys)

    def replace(self, keys: Iterable[KeyEntry | str]) -> None:
        """Take a new key set: revoked keys are refused from the next request on."""
        self._entries = tuple(KeyEntry(_digest(k)) if isinstance(k, str) else k for k in keys)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (no keys = no authentication)."""
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, presented: str | None) -> KeyEntry | None:
        """The entry of a presented key, or None."""
        if presented is None:
            return None
        # Equal-length digests, and every key compared: timing reveals neither key nor match.
        candidate = _digest(presented)
        found = None
        for e in self._entries:
            if hmac.compare_digest(candidate, e.digest):
                found = e
        return found

    def identify(self, presented: str | None) -> str:
        """The key's identity (hex SHA-256) if `presented` is a configured key; else 401."""
        return self.caller(presented).identity

    def caller(self, presented: str | None) -> Caller:
        """Who presents `presented`: 401 for a missing or unknown key when keys are set."""
        if not self.enabled:
            return Caller("", self.open_scopes)
        if presented is None:
            raise Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`"
            )
        entry = self.find(presented)
        if entry is None:
            raise Unauthorized("invalid API key")
        return Caller(entry.identity, entry.scopes, entry.name, entry.max_concurrency)


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key a client sent as `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    auth = connection.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = connection.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def required_scope(handler: BaseRouteHandler) -> str:
    """What a route needs: its (or its router's) `opt["scope"]`, else inference."""
    return str(handler.opt.get("scope", INFERENCE))


def api_key_guard(keys: ApiKeys, public_paths: frozenset[str] = frozenset()) -> Any:
    """A Litestar guard: a key for every route but public ones, and the route's scope.

    On a public route a valid key is still recognised (so /health may show it details);
    a missing or wrong one just leaves the caller anonymous there.
    """

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        scope = required_scope(handler)
        if scope == PUBLIC or connection.scope["path"] in public_paths:
            try:
                caller = keys.caller(presented_key(connection))
            except Unauthorized:
                caller = ANONYMOUS
            connection.state[_STATE_KEY] = caller
            return
        caller = keys.caller(presented_key(connection))
        connection.state[_STATE_KEY] = caller
        record = current.get()
        if record is not None:  # the engine schedules fairly between owners
            record.owner = caller.identity
            record.owner_limit = caller.max_concurrency
        if not caller.may(scope):
            raise Forbidden(
                f"this API key lacks the `{scope}` scope this route needs"
                if keys.enabled
                else f"`{scope}` routes need an API key with that scope when the daemon "
                "listens beyond loopback"
            )

    return guard


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The caller the guard recognised (anonymous if none)."""
    value = connection.state.get(_STATE_KEY)
    return value if isinstance(value, Caller) else ANONYMOUS


def provide_api_key(request: Request[Any, Any, Any]) -> str | None:
    """Dependency `api_key`: the caller's key identity (hex SHA-256), or None when auth is off.

    Declare `api_key: NamedDependency[str | None]` in a handler to get it; the guard has
    already refused requests without a valid key, so a handler never sees an unauthenticated
    caller when keys are configured. Use it to scope per-client state (e.g. the request_id store).
    """
    identity = caller_of(request).identity
    return identity or None


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """Dependency `caller`: who calls, with scopes (what a response may show depends on it)."""
    return caller_of(request)
