"""Images and audio as every dialect sends them (a data URL, base64 with a MIME type or an
audio format) into the core's MediaPart, and the limits a request's media must keep; all
refusals are 400s naming the dialect's field, before any model loads or any decoder runs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from daemon.core.choices import Policy
from daemon.core.request import ChatRequest, MediaPart
from daemon.engine.mediainfo import sniff
from daemon.errors import InvalidRequest

# MIME types of the image formats libmtmd decodes (stb_image), by the format sniff names.
IMAGE_MIMES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/bmp": "bmp",
}
# The audio formats libmtmd's helper decodes (miniaudio), as OpenAI's `input_audio.format`
# names them.
AUDIO_FORMATS = frozenset({"wav", "mp3", "flac"})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.I)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


def image_from_url(url: str, param: str) -> MediaPart:
    """An image given as a URL: a data URL (base64) now; a file:// or http(s) URL as a part
    still to read, which `resolve_media` reads where the daemon's policy allows it."""
    m = _DATA_URL.match(url)
    if m is not None:
        return image_from_base64(url[m.end() :], m["mime"], param)
    if url[:8].lower().startswith(("http://", "https://", "file://")):
        return MediaPart(b"", "", source=url)
    raise InvalidRequest(
        "an image URL must be a data:image/...;base64,... URL (or file:// under --media-dir, "
        "http(s) from a host --allow-remote-media names)",
        param=param,
    )


def image_from_base64(data: str, mime: str | None, param: str) -> MediaPart:
    """An image given as base64 text with the MIME type the client declared (None: none
    declared); the bytes must be a PNG, JPEG, GIF or BMP of that type."""
    return image_from_bytes(_unbase64(data, "image", param), mime, param)


def _unbase64(data: str, what: str, param: str) -> bytes:
    raw = data.strip().encode("ascii", "replace")
    raw = re.sub(rb"\s+", b"", raw)  # wrapped base64 (MIME's 76-column lines) is common
    if not raw or len(raw) % 4 or not _B64_CHARS.match(raw):
        raise InvalidRequest(f"the {what} is not valid base64", param=param)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"the {what} is not valid base64", param=param) from None


def audio_from_base64(data: str, fmt: str | None, param: str) -> MediaPart:
    """Audio given as base64 text in the format the client declared (None: none declared):
    the bytes must be a WAV, MP3 or FLAC file of that format, whose header is consistent."""
    return audio_from_bytes(_unbase64(data, "audio", param), fmt, param)


def audio_from_bytes(blob: bytes, fmt: str | None, param: str) -> MediaPart:
    """An audio file's bytes in the format the client declared (None: none declared).

    Runs on the event loop: an MP3's length, which takes a walk over every frame, is left to
    the engine (checked there before decoding); a WAV's or FLAC's is read here."""
    header = sniff(blob, walk_mp3=False)
    if header is None or header.kind != "audio":
        raise InvalidRequest("the audio is not a WAV, MP3 or FLAC file", param=param)
    if fmt is not None:
        if fmt.lower() not in AUDIO_FORMATS:
            raise InvalidRequest(
                f"unsupported audio format {fmt[:40]!r} (wav, mp3 or flac)", param=param
            )
        if fmt.lower() != header.format:
            raise InvalidRequest(
                f"the audio is declared {fmt[:40]} but the file is {header.format.upper()}",
                param=param,
            )
    if header.flaw is not None:
        raise InvalidRequest(header.flaw, param=param)
    if header.seconds == 0:
        raise InvalidRequest("the audio is empty", param=param)
    digest = hashlib.sha256(blob).hexdigest()
    return MediaPart(blob, digest, fmt, kind="audio", seconds=header.seconds)


def media_from_base64(data: str, param: str) -> MediaPart:
    """An image or audio file given as base64 text with no declared type: its first bytes
    say which (as llama-server's `multimodal_data` is read)."""
    blob = _unbase64(data, "file", param)
    header = sniff(blob, walk_mp3=False)
    if header is not None and header.kind == "audio":
        return audio_from_bytes(blob, None, param)
    return image_from_bytes(blob, None, param)


def image_from_bytes(blob: bytes, mime: str | None, param: str) -> MediaPart:
    """An image file's bytes with the MIME type the client declared (None: none declared);
    they must be a PNG, JPEG, GIF or BMP of that type."""
    header = sniff(blob, walk_mp3=False)  # on the event loop: an MP3 is refused unwalked
    if header is None or header.kind != "image":
        raise InvalidRequest("the image is not a PNG, JPEG, GIF or BMP file", param=param)
    if mime is not None:
        declared = IMAGE_MIMES.get(mime.lower())
        if declared is None:
            raise InvalidRequest(f"unsupported image type {mime[:40]!r}", param=param)
        if declared != header.format:
            raise InvalidRequest(
                f"the image is declared {mime[:40]} but is a {header.format.upper()} file",
                param=param,
            )
    digest = hashlib.sha256(blob).hexdigest()
    return MediaPart(blob, digest, mime, header.width, header.height)


def check_count(n: int, policy: Policy, param: str) -> None:
    """At most the policy's images and audio clips in one request (several prompts'
    together), counted before any is decoded."""
    if n > policy.max_images:
        raise InvalidRequest(
            f"{n} images and audio clips; a request may carry at most {policy.max_images}",
            param=param,
        )


def check_media(req: ChatRequest, policy: Policy, param: str = "messages") -> None:
    """The request's images and audio within the policy's count and bytes, the pixels and
    seconds their headers declare (the engine checks the decoded sizes again)."""
    media = req.media
    if any(part.source is not None for part in media):
        # A route that does not read image URLs (resolve_media) never passes one on.
        raise InvalidRequest(
            "image URLs are not read on this route: send the image inline", param=param
        )
    check_count(len(media), policy, param)
    seconds = sum(p.seconds or 0.0 for p in media if p.kind == "audio")
    if seconds > policy.max_audio_seconds:
        raise InvalidRequest(
            f"{seconds:.1f} s of audio is over the {policy.max_audio_seconds:g}-second limit",
            param=param,
        )
    for part in media:
        if len(part.data) > policy.max_image_bytes:
            raise InvalidRequest(
                f"an {'audio file' if part.kind == 'audio' else 'image'} of {len(part.data)} "
                f"bytes is over the {policy.max_image_bytes}-byte limit",
                param=param,
            )
        # The size the header declares, read when the image was parsed: no decoder has run.
        pixels = part.pixels
        if pixels is not None and pixels > policy.max_image_pixels:
            raise InvalidRequest(
                f"a {part.width}×{part.height} image is over the "
                f"{policy.max_image_pixels}-pixel limit",
                param=param,
            )
