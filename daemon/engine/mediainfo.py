"""What an encoded media file is, from its first bytes: kind, format and the size its header
declares (an image's width and height, a WAV's or FLAC's duration). Read before decoding, so
that limits (pixels, seconds) hold before a decoder allocates and bytes of no supported
format never reach libmtmd's fallbacks.

MP3 declares no length (a frame's bitrate says nothing of the next): its duration is read
by walking its frame headers, and is unknown where the walk does not account for every byte
(junk between frames, a free-format bitrate); then only decoding tells, and its bytes bound
it meanwhile (at least 1,000 bytes a second: 8 kbit/s, MPEG-2.5's lowest bitrate)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["image", "audio"]


@dataclass(frozen=True)
class MediaHeader:
    """A recognised file: its kind and format, an image's declared width and height, audio's
    declared duration, and why the header cannot be true (`flaw`: refuse the file)."""

    kind: MediaKind
    format: str
    width: int | None = None
    height: int | None = None
    seconds: float | None = None  # None: the header does not say (MP3, a streamed WAV)
    flaw: str | None = None

    @property
    def pixels(self) -> int | None:
        """Declared width × height of an image (None when unknown)."""
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


# JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC, which share the range).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff(data: bytes, *, walk_mp3: bool = True) -> MediaHeader | None:
    """The header of an image stb_image decodes (PNG, JPEG, GIF, BMP) or audio libmtmd's
    helper decodes (WAV, MP3, FLAC); None for anything else. Without `walk_mp3` an MP3's
    length is left unknown: the walk visits every frame (0.2 s for 8 MiB of the smallest
    ones), too long for an event loop; the engine walks it off the loop."""
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
        return _wav(data)
    if data.startswith(b"fLaC"):
        return _flac(data)
    if data.startswith(b"ID3") or (len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return MediaHeader("audio", "mp3", seconds=_mp3_seconds(data) if walk_mp3 else None)
    return None


# Markers and fill bytes walked before a JPEG's start-of-frame (real files have a dozen or so:
# APPn, DQT, DHT, ...). The walk runs on the event loop, and megabytes of fill bytes or empty
# segments must not hold it; a frame hidden behind more is refused, not decoded unmeasured.
_MAX_JPEG_STEPS = 512


def _jpeg(data: bytes) -> MediaHeader:
    """Walk the marker segments to the first start-of-frame (its size is the image's)."""
    i = 2
    for _ in range(_MAX_JPEG_STEPS):
        if i + 4 > len(data):
            break
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
    else:
        return MediaHeader(
            "image",
            "jpeg",
            flaw=f"the JPEG has over {_MAX_JPEG_STEPS} markers before its frame header",
        )
    return MediaHeader("image", "jpeg")  # a size the decoder alone will find (or not)


# WAV format tags whose frames are fixed-size PCM (integer, IEEE float, A-law, mu-law) or
# say so in the extensible header: byte rate = sample rate × block align must hold.
_PCM_TAGS = frozenset({1, 3, 6, 7, 0xFFFE})
# Chunks walked before `data` (real files have a few: fmt, fact, LIST, bext, JUNK): the walk
# runs on the event loop, and a file of a million empty chunks must not hold it.
_MAX_WAV_CHUNKS = 64
# A chunk size a streaming writer leaves when it cannot seek back: "until the end".
_UNKNOWN_SIZE = frozenset({0, 0xFFFFFFFF})


def _wav(data: bytes) -> MediaHeader:
    """Walk the RIFF chunks to `fmt ` and `data`: the duration is the data's bytes over the
    byte rate, and a data chunk longer than the file, or a byte rate its fields contradict,
    is a header that lies."""
    fmt: tuple[int, ...] | None = None
    i = 12
    for _ in range(_MAX_WAV_CHUNKS):
        if i + 8 > len(data):
            break
        kind, size = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])[0]
        body = i + 8
        if kind == b"fmt ":
            if size < 16 or body + 16 > len(data):
                return MediaHeader("audio", "wav", flaw="the WAV file's fmt chunk is truncated")
            fmt = struct.unpack("<HHIIHH", data[body : body + 16])
        elif kind == b"data":
            if fmt is None:
                return MediaHeader("audio", "wav", flaw="the WAV file has no fmt chunk")
            tag, channels, rate, byte_rate, align, bits = fmt
            if not channels or not rate or not byte_rate or not align:
                return MediaHeader(
                    "audio", "wav", flaw="the WAV header declares no channels, rate or frame"
                )
            if tag in _PCM_TAGS and (
                byte_rate != rate * align or align != channels * ((bits + 7) // 8)
            ):
                return MediaHeader(
                    "audio",
                    "wav",
                    flaw=f"the WAV header is inconsistent (byte rate {byte_rate}, {rate} Hz, "
                    f"{channels} channels of {bits} bits in {align}-byte frames)",
                )
            present = len(data) - body
            if size in _UNKNOWN_SIZE and present > 0:
                size = present  # streamed: the data runs to the end of the file
            elif size > present:
                return MediaHeader(
                    "audio",
                    "wav",
                    flaw=f"the WAV file is truncated ({present} of the {size} data bytes "
                    "its header declares)",
                )
            return MediaHeader("audio", "wav", seconds=size / byte_rate)
        i = body + size + (size & 1)  # chunks are padded to even sizes
    else:
        return MediaHeader(
            "audio", "wav", flaw=f"the WAV file has over {_MAX_WAV_CHUNKS} chunks before its data"
        )
    return MediaHeader("audio", "wav", flaw="the WAV file has no data chunk (truncated?)")


def _flac(data: bytes) -> MediaHeader:
    """STREAMINFO (the first metadata block): sample rate and total samples (0: unknown)."""
    if len(data) < 8 + 34 or data[4] & 0x7F != 0:
        return MediaHeader("audio", "flac", flaw="the FLAC file's STREAMINFO is missing")
    info = int.from_bytes(data[8 + 10 : 8 + 18], "big")  # rate 20, channels 3, bps 5, total 36
    rate = info >> 44
    total = info & ((1 << 36) - 1)
    if rate == 0:
        return MediaHeader("audio", "flac", flaw="the FLAC file declares a sample rate of 0")
    return MediaHeader("audio", "flac", seconds=total / rate if total else None)


# MPEG audio bitrates in kbit/s by (MPEG-1?, layer) and the header's 4-bit index (0: free
# format, 15: invalid); sample rates by version (MPEG-1, 2, 2.5) and 2-bit index.
_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_seconds(data: bytes) -> float | None:
    """An MP3's duration from its frame headers, skipping an ID3v2 tag before them and an
    ID3v1 tag after; None unless the frames account for every byte between."""
    i = 0
    if data.startswith(b"ID3"):
        if len(data) < 10:
            return None
        size = 0
        for b in data[6:10]:  # syncsafe: 7 bits a byte
            size = size << 7 | (b & 0x7F)
        i = 10 + size + (10 if data[5] & 0x10 else 0)  # a footer repeats the header
    end = len(data) - 128 if data[-128:-125] == b"TAG" else len(data)
    seconds = 0.0
    while i < end:
        if end - i < 4 or data[i] != 0xFF or data[i + 1] & 0xE0 != 0xE0:
            return None
        version, layer = (data[i + 1] >> 3) & 3, 4 - ((data[i + 1] >> 1) & 3)
        bitrate, rate_index = data[i + 2] >> 4, (data[i + 2] >> 2) & 3
        if version == 1 or layer == 4 or bitrate in (0, 15) or rate_index == 3:
            return None  # reserved values, or a free-format bitrate no header gives
        mpeg1 = version == 3
        kbps, rate = _KBPS[(mpeg1, layer)][bitrate], _MPEG_RATES[version][rate_index]
        pad = (data[i + 2] >> 1) & 1
        if layer == 1:
            length, samples = (12 * kbps * 1000 // rate + pad) * 4, 384
        elif layer == 3 and not mpeg1:
            length, samples = 72 * kbps * 1000 // rate + pad, 576
        else:
            length, samples = 144 * kbps * 1000 // rate + pad, 1152
        seconds += samples / rate
        i += length  # a last frame cut short still counts whole: an upper bound
    return seconds
