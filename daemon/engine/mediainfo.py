"""What an encoded media file is, from its first bytes: kind, format and, for images, the
declared size. Read before decoding, so that limits (pixels) hold before a decoder allocates
and bytes of no supported format never reach libmtmd's fallbacks."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["image", "audio"]


@dataclass(frozen=True)
class MediaHeader:
    """A recognised file: its kind and format, and an image's declared width and height."""

    kind: MediaKind
    format: str
    width: int | None = None
    height: int | None = None

    @property
    def pixels(self) -> int | None:
        """Declared width × height of an image (None when unknown)."""
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


# JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC, which share the range).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff(data: bytes) -> MediaHeader | None:
    """The header of an image stb_image decodes (PNG, JPEG, GIF, BMP) or audio libmtmd's
    helper decodes (WAV, MP3, FLAC); None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return MediaHeader("image", "png", width, height)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return MediaHeader("image", "gif", width, height)
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return MediaHeader("image", "bmp", abs(width), abs(height))  # negative: top-down rows
    if data.startswith(b"RIFF") and data[8:12] == b"WAVE":
        return MediaHeader("audio", "wav")
    if data.startswith(b"fLaC"):
        return MediaHeader("audio", "flac")
    if data.startswith(b"ID3") or (len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return MediaHeader("audio", "mp3")
    return None


def _jpeg(data: bytes) -> MediaHeader:
    """Walk the marker segments to the first start-of-frame (its size is the image's)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers: no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return MediaHeader("image", "jpeg", width, height)
        if length < 2:
            break
        i += 2 + length
    return MediaHeader("image", "jpeg")  # a size the decoder alone will find (or not)
