"""Exceptions raised by the quantize package; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class QuantizeError(Exception):
    """Base class of every error the quantize package raises on purpose."""


class UnsupportedArchitecture(QuantizeError):
    """The checkpoint's architecture has no conversion table."""


class BrokenCheckpoint(QuantizeError):
    """A checkpoint file is missing, unreadable, or inconsistent with its config."""


class TokenizerError(QuantizeError):
    """The tokenizer files cannot be turned into a GGUF vocabulary."""


class UnknownType(QuantizeError):
    """An output or quantization type name is not one we know."""


class QuantizationFailed(QuantizeError):
    """llama.cpp's quantizer reported a failure."""


class FetchError(QuantizeError):
    """A repository or file could not be fetched from the hub."""


class InvalidGGUF(QuantizeError):
    """A file is not a readable GGUF model."""


class OutOfRange(QuantizeError):
    """A tensor holds values the output type cannot represent (F16 above 65504)."""
