"""Fetch Hugging Face checkpoints, convert them to GGUF and quantize them with llama.cpp."""

from quantize.convert import convert
from quantize.errors import (
    BrokenCheckpoint,
    FetchError,
    InvalidGGUF,
    QuantizationFailed,
    QuantizeError,
    TokenizerError,
    UnknownType,
    UnsupportedArchitecture,
)
from quantize.fetch import fetch
from quantize.info import GGUFInfo, inspect_gguf
from quantize.mmproj import convert_mmproj
from quantize.pull import pull
from quantize.quantize import QUANT_TYPES, quantize_gguf

__all__ = [
    "QUANT_TYPES",
    "BrokenCheckpoint",
    "FetchError",
    "GGUFInfo",
    "InvalidGGUF",
    "QuantizationFailed",
    "QuantizeError",
    "TokenizerError",
    "UnknownType",
    "UnsupportedArchitecture",
    "convert",
    "convert_mmproj",
    "fetch",
    "inspect_gguf",
    "pull",
    "quantize_gguf",
]
