"""daemon/engine/mediainfo.py: formats and declared sizes from the first bytes, and the
pixel limit that holds before libmtmd decodes anything."""

from __future__ import annotations

import struct

import pytest

from daemon.engine.errors import InvalidInput
from daemon.engine.mediainfo import MediaHeader, sniff
from daemon.engine.native.mtmd import Projector
from tests.media.tiny_vlm import png_bytes, sample_image


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR that declare a size, with no image data behind them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4


def _jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof2 = b"\xff\xc2" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00" * 3
    return b"\xff\xd8" + app0 + sof2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png_bytes(sample_image()), MediaHeader("image", "png", 32, 32)),
        (_png_header(100_000, 100_000), MediaHeader("image", "png", 100_000, 100_000)),
        (_jpeg_header(640, 480), MediaHeader("image", "jpeg", 640, 480)),  # progressive
        (b"\xff\xd8\xff\xe0\x00", MediaHeader("image", "jpeg")),  # cut before its frame
        (b"GIF89a" + struct.pack("<HH", 7, 9) + b"\x00" * 8, MediaHeader("image", "gif", 7, 9)),
        (
            b"BM" + b"\x00" * 16 + struct.pack("<ii", 5, -6) + b"\x00" * 8,
            MediaHeader("image", "bmp", 5, 6),
        ),
        # Recognised, and cut before the header says how long they are (tests/media/test_audio.py
        # reads whole ones).
        (
            b"RIFF\x24\x00\x00\x00WAVEfmt ",
            MediaHeader("audio", "wav", flaw="the WAV file has no data chunk (truncated?)"),
        ),
        (
            b"fLaC\x00\x00\x00\x22",
            MediaHeader("audio", "flac", flaw="the FLAC file's STREAMINFO is missing"),
        ),
        (b"ID3\x04\x00\x00", MediaHeader("audio", "mp3")),
        # One frame header (MPEG-1 Layer III, 128 kbit/s, 44.1 kHz), counted as a whole frame.
        (b"\xff\xfb\x90\x64", MediaHeader("audio", "mp3", seconds=1152 / 44100)),
    ],
)
def test_recognised(data: bytes, expected: MediaHeader) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"RIFF\x24\x00\x00\x00WEBPVP8 ", b"\x00\x00\x00\x18ftypmp42", b"\x89PNG"],
)
def test_not_recognised(data: bytes) -> None:
    assert sniff(data) is None


def test_a_declared_size_over_the_limit_is_refused_before_decoding(projector: Projector) -> None:
    """10^10 declared pixels would be 30 GB of RGB: refused from the header alone."""
    with pytest.raises(InvalidInput, match="100000×100000 image is over the"):
        projector.bitmap_file_bytes(_png_header(100_000, 100_000), max_pixels=4096 * 4096)


def test_the_limit_is_inclusive(projector: Projector) -> None:
    png = png_bytes(sample_image())
    with pytest.raises(InvalidInput, match="over the 1023-pixel limit"):
        projector.bitmap_file_bytes(png, max_pixels=1023)
    with projector.bitmap_file_bytes(png, max_pixels=1024) as bitmap:
        assert (bitmap.width, bitmap.height) == (32, 32)


def test_a_jpeg_frame_hidden_behind_too_many_markers_is_refused_quickly() -> None:
    """The walk runs on the event loop: megabytes of fill bytes or empty segments end it after
    a bounded number of steps, as a flaw (never a size left for the decoder to find)."""
    empty_app = b"\xff\xe1\x00\x02"  # an APP1 segment holding nothing
    frame = _jpeg_header(640, 480)[2:]
    real = b"\xff\xd8" + empty_app * 20 + frame
    assert sniff(real) == MediaHeader("image", "jpeg", 640, 480)
    for padding in (empty_app * 2_000_000, b"\xff" * 8_000_000):
        header = sniff(b"\xff\xd8" + padding + frame)
        assert header is not None and header.flaw is not None and "markers" in header.flaw
