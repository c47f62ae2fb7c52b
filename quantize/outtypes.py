"""Output tensor types of the converter and the per-tensor choice between them."""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from quantize.errors import OutOfRange, UnknownType

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class OutType:
    """A converter output type: the type of 2-D weights and the GGUF file type it declares."""

    name: str
    weights: Q
    file_type: gguf.LlamaFileType


OUTTYPES: dict[str, OutType] = {
    "f32": OutType("f32", Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": OutType("f16", Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": OutType("bf16", Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": OutType("q8_0", Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def outtype(name: str) -> OutType:
    """Look up an output type by name (case-insensitive)."""
    try:
        return OUTTYPES[name.lower()]
    except KeyError:
        raise UnknownType(
            f"unknown output type {name!r} (choose from {', '.join(OUTTYPES)})"
        ) from None


def tensor_type(out: OutType, shape: tuple[int, ...], name: str, keep_f32: bool) -> Q:
    """The GGML type one tensor gets: 1-D, biases and precision-critical tables stay F32."""
    if len(shape) <= 1 or not name.endswith(".weight") or keep_f32:
        return Q.F32
    if out.weights in (Q.Q8_0,) and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16  # rows that do not fill whole blocks cannot be block-quantized
    return out.weights


def nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    """Size in bytes of a tensor of this logical shape stored as qtype."""
    byte_shape = (
        gguf.quant_shape_to_byte_shape(shape, qtype) if qtype not in (Q.F32, Q.F16) else shape
    )
    itemsize = {Q.F32: 4, Q.F16: 2}.get(qtype, 1)
    return int(np.prod(byte_shape, dtype=np.int64)) * itemsize


F16_MAX = float(np.finfo(np.float16).max)  # 65504; BF16 and F32 reach 3.4e38


def encode(data: np.ndarray, qtype: Q, name: str = "tensor") -> np.ndarray:
    """Convert a float tensor to the bytes/array GGUFWriter stores for qtype.

    F16 is checked, never silently overflowed: a BF16 or F32 value beyond 65504 would become
    inf and poison every activation it touches, so such a tensor is refused instead.
    """
    if qtype == Q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F16:
        finite = data[np.isfinite(data)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        if peak > F16_MAX:
            raise OutOfRange(
                f"{name}: values up to {peak:.6g} do not fit F16 (max {F16_MAX:g}); "
                "convert with --outtype bf16 or f32"
            )
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
