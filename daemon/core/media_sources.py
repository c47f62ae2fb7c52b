"""Images given by reference: `file://` URLs of files under `--media-dir`, and http(s) URLs of
the hosts `--allow-remote-media` names, read before the request goes on (a server that
fetches URLs for its callers is an SSRF tool: nothing is read unless the operator said so).

Every refusal is a 400 naming the dialect's field; a file is read only from inside the
folder (symlinks resolved first), a download stops at `--max-image-bytes` and at
`--remote-media-timeout`, and a redirect is followed only to a host that is allowed too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from daemon.core.choices import Policy
from daemon.core.media import image_from_bytes
from daemon.core.request import ChatRequest, MediaPart
from daemon.errors import InvalidRequest

MAX_REDIRECTS = 3


async def resolve_media(req: ChatRequest, policy: Policy, param: str) -> ChatRequest:
    """`req` with every image given by URL read (or a 400); unchanged when none is."""
    if not any(part.source is not None for part in req.media):
        return req
    messages = []
    for m in req.messages:
        if any(part.source is not None for part in m.media):
            media = tuple([await _read(part, policy, param) for part in m.media])
            m = replace(m, media=media)
        messages.append(m)
    return replace(req, messages=tuple(messages))


async def _read(part: MediaPart, policy: Policy, param: str) -> MediaPart:
    if part.source is None:
        return part
    if part.source[:7].lower() == "file://":
        blob = await asyncio.to_thread(read_file, part.source, policy, param)
        return image_from_bytes(blob, None, param)
    return image_from_bytes(await fetch(part.source, policy, param), None, param)


def read_file(url: str, policy: Policy, param: str) -> bytes:
    """The file a `file://` URL names under the media folder: a path relative to it (or an
    absolute one inside it); never outside it, never a symlink leading out."""
    if policy.media_dir is None:
        raise InvalidRequest(
            "file:// image URLs are not read: the daemon has no --media-dir", param=param
        )
    root = policy.media_dir.resolve()
    name = unquote(url[len("file://") :])
    if not name or "\x00" in name:
        raise InvalidRequest("the file:// URL names no file", param=param)
    path = Path(name) if Path(name).is_absolute() else root / name
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidRequest("no such image file under --media-dir", param=param) from None
    if not real.is_relative_to(root) or not real.is_file():
        raise InvalidRequest("no such image file under --media-dir", param=param)
    size = real.stat().st_size
    if size > policy.max_image_bytes:
        raise InvalidRequest(
            f"an image of {size} bytes is over the {policy.max_image_bytes}-byte limit",
            param=param,
        )
    return real.read_bytes()


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether `url`'s host (or host:port) is one the operator allows (`*`: any)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    with_port = f"{host}:{parts.port}" if parts.port else host
    return "*" in allowed or host in allowed or with_port in allowed


async def fetch(url: str, policy: Policy, param: str) -> bytes:
    """The body of an http(s) image URL of an allowed host, within the byte and time limits."""
    if not policy.remote_media:
        raise InvalidRequest(
            "remote image URLs are not fetched: send the image inline as a data: URL "
            "(the operator may allow hosts with --allow-remote-media)",
            param=param,
        )
    timeout = policy.remote_media_timeout
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await asyncio.wait_for(_download(client, url, policy, param), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise InvalidRequest(
            f"the image URL did not answer within {timeout:g} s", param=param
        ) from None
    except httpx.HTTPError as exc:
        raise InvalidRequest(
            f"the image URL could not be fetched ({type(exc).__name__})", param=param
        ) from None


async def _download(client: httpx.AsyncClient, url: str, policy: Policy, param: str) -> bytes:
    """GET `url`, following redirects only to allowed hosts, stopping at the byte limit."""
    limit = policy.max_image_bytes
    for _ in range(MAX_REDIRECTS + 1):
        if not host_allowed(url, policy.remote_media):
            raise InvalidRequest(
                f"image URLs of {urlsplit(url).hostname or 'that host'} are not fetched "
                "(not in --allow-remote-media)",
                param=param,
            )
        async with client.stream("GET", url) as r:
            if r.is_redirect and "location" in r.headers:
                url = urljoin(url, r.headers["location"])
                continue
            if r.status_code != 200:
                raise InvalidRequest(f"the image URL answered {r.status_code}", param=param)
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise InvalidRequest(
                        f"the image at that URL is over the {limit}-byte limit", param=param
                    )
            return bytes(body)
    raise InvalidRequest("the image URL redirects too often", param=param)
