"""Audio in process: the tiny Ultravox projector (tests/media/tiny_audio.py) loads in libmtmd
and encodes a clip into (tokens, n_embd) embeddings, equal for equal clips and different for
different ones; headers declare durations that the limits read before decoding, and a header
that lies is refused (before decoding where it contradicts itself, after where only the
decoded length tells)."""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from daemon.core.media import audio_from_base64, media_from_base64
from daemon.engine.errors import InvalidInput
from daemon.engine.media import MediaEncoder, Medium, is_stand_in
from daemon.engine.mediainfo import sniff
from daemon.engine.native.mtmd import ChunkType, Projector
from daemon.errors import InvalidRequest
from tests.media.tiny_audio import (
    SAMPLE_RATE,
    TOKENS_PER_WINDOW,
    adpcm_wav,
    flac_bytes,
    mp3_silence,
    tone,
    wav_bytes,
)
from tests.media.tiny_vlm import png_bytes, sample_image

WAV = wav_bytes(tone(440.0, 0.3))


def embeddings(p: Projector, blob: bytes) -> list[np.ndarray]:
    """Every audio chunk's embeddings of a prompt holding the clip once."""
    with (
        p.bitmap_file_bytes(blob, "clip") as bitmap,
        p.tokenize(f"Listen: {p.marker} Done.", [bitmap], add_special=True) as chunks,
    ):
        return [p.encode(c) for c in chunks if c.type == ChunkType.AUDIO]


def test_the_projector_hears_and_does_not_see(audio_projector: Projector) -> None:
    assert audio_projector.audio and not audio_projector.vision
    assert audio_projector.audio_sample_rate == SAMPLE_RATE


def test_a_clip_encodes_to_one_window_of_embeddings(audio_projector: Projector) -> None:
    with audio_projector.bitmap_file_bytes(WAV) as bitmap:
        assert bitmap.is_audio and bitmap.width == len(tone(440.0, 0.3))
    (embd,) = embeddings(audio_projector, WAV)
    assert embd.shape == (TOKENS_PER_WINDOW, audio_projector.n_embd)
    assert np.isfinite(embd).all() and float(np.abs(embd).mean()) > 1e-3


def test_equal_clips_encode_equally_and_different_ones_do_not(
    audio_projector: Projector,
) -> None:
    (one,) = embeddings(audio_projector, WAV)
    (again,) = embeddings(audio_projector, wav_bytes(tone(440.0, 0.3)))
    (other,) = embeddings(audio_projector, wav_bytes(tone(880.0, 0.3)))
    np.testing.assert_array_equal(one, again)
    assert float(np.abs(one - other).max()) > 1e-2


def test_a_flac_clip_decodes_to_the_wavs_samples(audio_projector: Projector) -> None:
    with (
        audio_projector.bitmap_file_bytes(WAV) as wav,
        audio_projector.bitmap_file_bytes(flac_bytes(tone(440.0, 0.3))) as flac,
    ):
        assert wav.data() == flac.data()


def test_headers_declare_durations() -> None:
    assert sniff(WAV).seconds == pytest.approx(0.3)  # type: ignore[union-attr]
    assert sniff(wav_bytes(tone(440.0, 1.0, 8000), 8000)).seconds == pytest.approx(1.0)  # type: ignore[union-attr]
    flac = sniff(flac_bytes(tone(440.0, 0.5)))
    assert flac is not None and flac.format == "flac" and flac.seconds == pytest.approx(0.5)
    assert sniff(flac_bytes(tone(440.0, 0.5), declare_total=False)).seconds is None  # type: ignore[union-attr]


def _with_fmt(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A WAV with one field of its fmt chunk (at `offset` in the chunk's body) replaced."""
    out = bytearray(blob)
    struct.pack_into(fmt, out, 20 + offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (WAV[: len(WAV) // 2], "truncated"),
        (WAV[:30], "truncated"),
        (WAV[:12], "no data chunk"),
        (_with_fmt(WAV, 8, "<I", 12345), "inconsistent"),  # byte rate
        (_with_fmt(WAV, 2, "<H", 2), "inconsistent"),  # channels, frames still 2 bytes
        (_with_fmt(WAV, 4, "<I", 0), "no channels, rate"),  # sample rate
        (b"fLaC" + bytes(10), "STREAMINFO"),
        (WAV[:12] + b"JUNK\0\0\0\0" * 100 + WAV[12:], "over 64 chunks"),
    ],
)
def test_lying_or_truncated_headers_are_flawed(blob: bytes, says: str) -> None:
    header = sniff(blob)
    assert header is not None and header.kind == "audio"
    assert header.flaw is not None and says in header.flaw, header


def test_the_projector_refuses_before_and_after_decoding(audio_projector: Projector) -> None:
    long_wav = wav_bytes(tone(440.0, 3.0))
    with pytest.raises(InvalidInput, match="over the 2-second limit"):
        audio_projector.bitmap_file_bytes(long_wav, max_seconds=2)
    with pytest.raises(InvalidInput, match="truncated"):
        audio_projector.bitmap_file_bytes(long_wav[:1000], max_seconds=2)
    # The header says 0.05 s; decoded, the clip is 3 s: refused once decoded.
    lying = adpcm_wav(3.0, byte_rate=1_000_000)
    assert sniff(lying).seconds < 0.1  # type: ignore[operator,union-attr]
    with pytest.raises(InvalidInput, match="over the 2-second limit"):
        audio_projector.bitmap_file_bytes(lying, max_seconds=2)
    with audio_projector.bitmap_file_bytes(lying, max_seconds=4) as ok:
        assert ok.width >= 3 * SAMPLE_RATE
    # libmtmd's helper cannot size a FLAC that does not declare its length.
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        audio_projector.bitmap_file_bytes(flac_bytes(tone(440.0, 0.5), declare_total=False))


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def test_input_audio_parts() -> None:
    part = audio_from_base64(_b64(WAV), "wav", "messages")
    assert part.kind == "audio" and part.seconds == pytest.approx(0.3) and len(part.digest) == 64
    assert audio_from_base64(_b64(flac_bytes(tone())), "FLAC", "m").seconds == pytest.approx(0.3)
    assert audio_from_base64(_b64(mp3_silence(1.0)), "mp3", "m").kind == "audio"
    # /completion's multimodal_data: the bytes say which kind a file is.
    assert media_from_base64(_b64(WAV), "prompt").kind == "audio"
    assert media_from_base64(_b64(png_bytes(sample_image())), "prompt").kind == "image"


@pytest.mark.parametrize(
    ("data", "fmt", "says"),
    [
        ("not*base64!", "wav", "base64"),
        ("", "wav", "base64"),
        (_b64(WAV), "mp3", "declared mp3 but the file is WAV"),
        (_b64(WAV), "ogg", "unsupported audio format"),
        (_b64(b"just some text, no audio"), "wav", "not a WAV, MP3 or FLAC"),
        (_b64(png_bytes(sample_image())), "wav", "not a WAV, MP3 or FLAC"),
        (_b64(wav_bytes(tone(seconds=0.0))), "wav", "empty"),
        (_b64(WAV[:100]), "wav", "truncated"),
    ],
)
def test_bad_input_audio_is_refused_naming_the_field(data: str, fmt: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as info:
        audio_from_base64(data, fmt, "messages[0].content[1]")
    assert info.value.param == "messages[0].content[1]"


def test_a_long_clip_is_one_span_per_window_keyed_by_its_digest(
    audio_projector: Projector,
) -> None:
    """31 s are two 30 s windows: two media chunks of TOKENS_PER_WINDOW positions each, with
    stand-ins of their own, the same for the same bytes and others for other bytes."""
    enc = MediaEncoder(audio_projector)  # not closed: the session's projector stays open
    clip = wav_bytes(tone(440.0, 31.0))
    text = f"Listen: {audio_projector.marker} Done."
    tokens, media = enc.prompt(text, [Medium(clip, "d" * 64, "audio")], add_special=True)
    assert [len(s.embd) for s in media.spans] == [TOKENS_PER_WINDOW] * 2
    first, second = media.spans
    assert second.start == first.end  # the windows follow each other
    held = [t for t in tokens if is_stand_in(t)]
    assert len(held) == 2 * TOKENS_PER_WINDOW == len(set(held))
    again, _ = enc.prompt(text, [Medium(clip, "d" * 64, "audio")], add_special=True)
    other, _ = enc.prompt(text, [Medium(clip, "e" * 64, "audio")], add_special=True)
    assert again == tokens
    assert not set(held) & {t for t in other if is_stand_in(t)}
    assert enc.cache.hits >= 2  # the second prompt's windows were not encoded again
    with pytest.raises(InvalidInput, match="over the 30-second limit"):
        enc.prompt(text, [Medium(clip, "d" * 64, "audio")], add_special=True, max_seconds=30)


def flac_declaring(seconds: float) -> bytes:
    """A short FLAC whose STREAMINFO declares `seconds` of samples."""
    out = bytearray(flac_bytes(tone(440.0, 0.3)))
    info = int.from_bytes(out[18:26], "big")
    total = int(seconds * SAMPLE_RATE)
    out[18:26] = ((info >> 36 << 36) | total).to_bytes(8, "big")
    return bytes(out)


def test_a_flac_declaring_an_hour_is_refused_from_its_header(audio_projector: Projector) -> None:
    flac = flac_declaring(3600.0)
    assert sniff(flac).seconds == pytest.approx(3600.0)  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match=r"3600\.0 s of audio is over the 300-second limit"):
        audio_projector.bitmap_file_bytes(flac, max_seconds=300)


def test_an_mp3s_length_is_walked_from_its_frame_headers(audio_projector: Projector) -> None:
    mp3 = mp3_silence(0.5)
    header = sniff(mp3)
    assert header is not None and header.format == "mp3"
    assert header.seconds == pytest.approx(0.5, abs=0.04)
    with audio_projector.bitmap_file_bytes(mp3) as bitmap:
        assert bitmap.width / SAMPLE_RATE == pytest.approx(header.seconds, abs=1e-3)
    # An ID3v2 tag before the frames is skipped.
    tagged = b"ID3\x04\x00\x00\x00\x00\x00\x05" + bytes(5) + mp3
    assert sniff(tagged).seconds == header.seconds  # type: ignore[union-attr]
    # Over the limit from the frame headers alone: refused before decoding.
    with pytest.raises(InvalidInput, match="over the 2-second limit"):
        audio_projector.bitmap_file_bytes(mp3_silence(3.0), max_seconds=2)


def test_an_mp3_the_walk_cannot_account_for_is_bounded_once_decoded(
    audio_projector: Projector,
) -> None:
    """Stray bytes between frames: the length is unknown until decoded, then checked."""
    mp3 = mp3_silence(3.0, junk_at=20)
    assert sniff(mp3).seconds is None  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="over the 2-second limit"):
        audio_projector.bitmap_file_bytes(mp3, max_seconds=2)
    with audio_projector.bitmap_file_bytes(mp3, max_seconds=4) as bitmap:
        assert bitmap.width > 2 * SAMPLE_RATE


def test_a_prompts_clips_are_limited_together(audio_projector: Projector) -> None:
    enc = MediaEncoder(audio_projector)  # not closed: the session's projector stays open
    three = wav_bytes(tone(440.0, 3.0))
    text = f"{audio_projector.marker} and {audio_projector.marker}?"
    clips = [Medium(three, "a" * 64, "audio"), Medium(three, "b" * 64, "audio")]
    with pytest.raises(InvalidInput, match=r"6\.0 s of audio is over the 5-second limit"):
        enc.prompt(text, clips, add_special=True, max_seconds=5)
    _, media = enc.prompt(text, clips, add_special=True, max_seconds=6)
    assert len(media.spans) == 2
