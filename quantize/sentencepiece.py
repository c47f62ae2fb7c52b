"""Read a SentencePiece tokenizer.model (a protobuf) without the sentencepiece package."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quantize.errors import TokenizerError


@dataclass(frozen=True)
class Piece:
    """One vocabulary entry: text, score and SentencePiece type (1 normal .. 6 byte)."""

    text: str
    score: float
    type: int


@dataclass(frozen=True)
class SentencePieceModel:
    """The parts of ModelProto a GGUF vocabulary needs."""

    pieces: list[Piece]
    add_dummy_prefix: bool


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TokenizerError("tokenizer.model: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Decode one protobuf message level into (field number, wire type, value)."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise TokenizerError(f"tokenizer.model: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise TokenizerError("tokenizer.model: truncated message")
        out.append((number, wire, value))
    return out


def parse(data: bytes) -> SentencePieceModel:
    """Parse ModelProto: field 1 = pieces {1 text, 2 score, 3 type}, field 3 = normalizer spec."""
    pieces: list[Piece] = []
    add_dummy_prefix = True  # protobuf default of NormalizerSpec.add_dummy_prefix
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            assert isinstance(value, bytes)
            text, score, kind = "", 0.0, 1
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    assert isinstance(v, bytes)
                    text = v.decode("utf-8")
                elif n == 2 and w == 5:
                    assert isinstance(v, bytes)
                    (score,) = struct.unpack("<f", v)
                elif n == 3 and w == 0:
                    assert isinstance(v, int)
                    kind = v
            pieces.append(Piece(text, score, kind))
        elif number == 3 and wire == 2:
            assert isinstance(value, bytes)
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    add_dummy_prefix = bool(v)
    if not pieces:
        raise TokenizerError("tokenizer.model: no pieces")
    return SentencePieceModel(pieces, add_dummy_prefix)
