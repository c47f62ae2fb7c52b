"""A tiny random Ultravox audio projector (a Whisper encoder, frames stacked, an RMS-normed
SwiGLU projection) written as llama.cpp's `convert_hf_to_gguf.py --mmproj` writes one, and
short test clips as 16 kHz mono WAV files made with the standard library.

Ultravox is the simplest audio projector libmtmd takes whose token count the file sets: a
clip is cut into 30 s windows of 3000 mel frames, the encoder halves them to 1500 positions
and the projector stacks STACK_FACTOR of them into one embedding (1500 / 30 = 50 tokens)."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import gguf
import numpy as np

from tests.media.tiny_weights import Init, encoder_blocks, mmproj_writer, write

N_MEL = 80  # Whisper's mel bins
HIDDEN = 32
FFN = 64
LAYERS = 2
HEADS = 2
N_POS = 1500  # positions of one 30 s window after the encoder's stride-2 convolution
STACK_FACTOR = 30
PROJ_FFN = 64  # the SwiGLU's width after gating (its input projection is twice as wide)
TOKENS_PER_WINDOW = N_POS // STACK_FACTOR
SAMPLE_RATE = 16000


def write_mmproj(out: Path, text_hidden: int, seed: int = 0) -> Path:
    """An F32 mmproj GGUF (convolutions F16, as the converter forces them) whose audio
    encoder is tiny and random, projecting into `text_hidden` (the language model's width)."""
    init = Init(seed)
    mat, vec = init.mat, init.vec
    h = HIDDEN
    tensors: dict[str, np.ndarray] = {
        # Conv1d weights (out, in, kernel); biases unsqueezed to (out, 1) as the converter does.
        "a.conv1d.1.weight": mat(h, N_MEL, 3).astype(np.float16),
        "a.conv1d.1.bias": vec(h)[:, None],
        "a.conv1d.2.weight": mat(h, h, 3).astype(np.float16),
        "a.conv1d.2.bias": vec(h)[:, None],
        "a.position_embd.weight": init.normal(N_POS, h),
    }
    # Whisper's key projection has no bias.
    tensors |= encoder_blocks(init, "a", LAYERS, h, FFN, key_bias=False)
    tensors["a.post_ln.weight"] = vec(h, 1.0)
    tensors["a.post_ln.bias"] = vec(h)
    tensors["mm.a.norm_pre.weight"] = vec(h * STACK_FACTOR, 1.0)
    tensors["mm.a.mlp.1.weight"] = mat(2 * PROJ_FFN, h * STACK_FACTOR)
    tensors["mm.a.norm_mid.weight"] = vec(PROJ_FFN, 1.0)
    tensors["mm.a.mlp.2.weight"] = mat(text_hidden, PROJ_FFN)

    writer = mmproj_writer(out, "tiny-ultravox")
    writer.add_clip_has_audio_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.ULTRAVOX)
    writer.add_audio_projection_dim(text_hidden)
    writer.add_audio_embedding_length(h)
    writer.add_audio_feed_forward_length(FFN)
    writer.add_audio_block_count(LAYERS)
    writer.add_audio_head_count(HEADS)
    writer.add_audio_num_mel_bins(N_MEL)
    writer.add_audio_attention_layernorm_eps(1e-5)
    writer.add_audio_stack_factor(STACK_FACTOR)
    write(writer, tensors)
    return out


def tone(freq: float = 440.0, seconds: float = 0.3, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A sine wave of `seconds` at `freq` Hz, as float samples in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV file of float samples (interleaved when channels > 1)."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def flac_bytes(
    samples: np.ndarray, rate: int = SAMPLE_RATE, *, declare_total: bool = True
) -> bytes:
    """A mono 16-bit FLAC file of float samples in verbatim subframes (no compression: the
    format's simplest valid encoding). Without `declare_total`, STREAMINFO's total sample
    count is 0 (unknown), so only decoding tells the length."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype(">i2")
    block = 4096
    n = len(pcm)
    total = n if declare_total else 0
    info = (
        block.to_bytes(2, "big")
        + block.to_bytes(2, "big")
        + bytes(6)  # min and max frame sizes: unknown
        + ((rate << 44) | (0 << 41) | (15 << 36) | total).to_bytes(8, "big")
        + bytes(16)  # MD5 of the samples: unknown
    )
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    for number, start in enumerate(range(0, n, block)):
        chunk = pcm[start : start + block]
        assert number < 128, "frame numbers past 127 need a longer UTF-8 coding"
        # Fixed blocking; block size in a 16-bit field after the header (0b0111); the sample
        # rate from STREAMINFO (0b0000); mono (0b0000); 16 bits a sample (0b100).
        header = bytes([0xFF, 0xF8, 0x70, 0x08, number]) + (len(chunk) - 1).to_bytes(2, "big")
        frame = header + bytes([_crc8(header)]) + bytes([0x02]) + chunk.tobytes()
        out += frame + _crc16(frame).to_bytes(2, "big")
    return bytes(out)


def adpcm_wav(seconds: float, byte_rate: int, rate: int = SAMPLE_RATE) -> bytes:
    """An IMA ADPCM WAV of silence lasting `seconds` whose header declares `byte_rate`: a
    compressed format's byte rate is the encoder's word, not a product of other fields, so a
    false one is a lie about the duration only decoding finds out."""
    per_block, align = 505, 256  # 4-byte block header, then 252 bytes of 4-bit samples
    blocks = int(seconds * rate / per_block) + 1
    data = bytes(align * blocks)
    fmt = struct.pack("<HHIIHHHH", 0x11, 1, rate, byte_rate, align, 4, 2, per_block)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def mp3_silence(seconds: float, *, junk_at: int | None = None) -> bytes:
    """An MP3 of silence: MPEG-1 Layer III frames at 32 kHz, 32 kbit/s, mono (144 bytes
    each, 1152 samples), whose side information and main data are all zero, so a decoder
    reads no spectrum. `junk_at` puts 7 stray bytes after that many frames."""
    header = bytes([0xFF, 0xFB, 0x18, 0xC0])
    frame = header + bytes(144 - len(header))
    n = max(1, round(seconds * 32000 / 1152))
    frames = [frame] * n
    if junk_at is not None:
        frames.insert(junk_at, b"garbage")
    return b"".join(frames)
