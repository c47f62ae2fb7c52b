"""RoPE scaling from config.json: GGUF metadata, Llama 3.1's rope_freqs tensor, or a refusal."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import gguf
import numpy as np

from quantize.errors import BrokenCheckpoint, UnsupportedArchitecture

log = logging.getLogger(__name__)

K = gguf.Keys
Config = Mapping[str, Any]

ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"

# rope_type values that mean "no scaling" (transformers writes "default" since 4.45).
UNSCALED = frozenset({"default", "none"})


def head_dim(config: Config) -> int:
    """Per-head dimension: explicit head_dim or hidden_size / num_attention_heads."""
    if config.get("head_dim"):
        return int(config["head_dim"])
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def rope_scaling(config: Config) -> dict[str, Any]:
    """config.json's rope_scaling (or transformers 5's rope_parameters); {} when absent."""
    return dict(config.get("rope_scaling") or config.get("rope_parameters") or {})


def rope_type(config: Config) -> str | None:
    """The scaling type ('linear', 'llama3', 'yarn', ...), or None for plain RoPE."""
    scaling = rope_scaling(config)
    kind = scaling.get("rope_type", scaling.get("type"))
    return None if kind is None or kind in UNSCALED else str(kind)


def rope_theta(config: Config) -> float | None:
    """rope_theta, top level or inside transformers 5's rope_parameters."""
    theta = config.get("rope_theta", rope_scaling(config).get("rope_theta"))
    return None if theta is None else float(theta)


def _factor(config: Config, kind: str) -> float:
    factor = rope_scaling(config).get("factor")
    if not isinstance(factor, int | float) or factor <= 0:
        raise BrokenCheckpoint(
            f"config.json rope_scaling of type {kind!r} needs a positive 'factor', got {factor!r}"
        )
    return float(factor)


def llama3_factors(config: Config) -> np.ndarray:
    """Llama 3.1's per-frequency divisors of the RoPE frequencies (llama.cpp's rope_freqs)."""
    scaling = rope_scaling(config)
    factor = _factor(config, "llama3")
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(
        scaling.get("original_max_position_embeddings")
        or config.get("original_max_position_embeddings")
        or 8192
    )
    if high <= low:
        raise BrokenCheckpoint(
            f"config.json rope_scaling: high_freq_factor {high} must exceed low_freq_factor {low}"
        )
    dim = head_dim(config)
    base = rope_theta(config) or 10000.0
    out = np.empty(dim // 2, dtype=np.float32)
    for i in range(dim // 2):
        wavelen = 2 * math.pi * base ** (2 * i / dim)
        if wavelen < original / high:
            out[i] = 1.0
        elif wavelen > original / low:
            out[i] = factor
        else:
            smooth = (original / wavelen - low) / (high - low)
            out[i] = 1.0 / ((1.0 - smooth) / factor + smooth)
    return out


def _linear(config: Config) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    kvs = {K.Rope.SCALING_TYPE: gguf.RopeScalingType.LINEAR.value}
    kvs[K.Rope.SCALING_FACTOR] = _factor(config, "linear")
    return kvs, {}


def _llama3(config: Config) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return {}, {ROPE_FREQS: llama3_factors(config)}


ScalingRule = Callable[[Config], tuple[dict[str, Any], dict[str, np.ndarray]]]

# Every rope_type the converter can express for llama.cpp; the arch table picks which it allows.
SCALINGS: dict[str, ScalingRule] = {"linear": _linear, "llama3": _llama3}


def scaling_for(
    config: Config, allowed: frozenset[str], arch_name: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """({GGUF key: value}, {tensor name: data}) for the config's RoPE scaling, or a refusal."""
    kind = rope_type(config)
    if kind is None:
        return {}, {}
    if kind not in allowed:
        supported = ", ".join(sorted(allowed)) or "none"
        raise UnsupportedArchitecture(
            f"config.json rope_scaling.rope_type {kind!r} is not supported for {arch_name} "
            f"(supported: {supported})"
        )
    return SCALINGS[kind](config)


def warn_sliding_window(config: Config) -> None:
    """llama.cpp's llama architecture attends to the whole context: say so for Mistral v0.1."""
    window = config.get("sliding_window")
    context = config.get("max_position_embeddings")
    if window and context and int(window) < int(context) and config.get("use_sliding_window", True):
        log.warning(
            "sliding_window %s < context %s: llama.cpp attends to the full context instead",
            window,
            context,
        )
