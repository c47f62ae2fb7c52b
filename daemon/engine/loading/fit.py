"""How many layers go to the GPU: fitted to the devices' free memory unless told (issue 26).

llama.cpp defaults to fitting layers to free device memory, and Ollama passes no layer
count at all; a daemon that keeps `--n-gpu-layers 0` leaves a laptop's GPU idle unless its
owner knows the flag. With `auto` (the default) each load reads every offload device's free
memory (ggml's device API), estimates the model's weights per layer and its KV cache per
token from the GGUF header, keeps a margin, and offloads the whole model when it fits, else
as many layers as fit. Where the operator set neither `--ctx-size` nor `--parallel`, slots ×
context shrink first (down to one slot of 2048 tokens) so that the whole model fits; a
context or slot count the operator chose is never changed.

`plan_offload` is a pure function of the numbers (tested on made-up devices);
`model_shape` reads a GGUF header.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from daemon.engine.native.ggufmeta import header

# Bytes one K or V element takes in the cache, by cache type.
KV_ELEMENT_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
MIN_CTX = 2048  # shrinking stops here: below it most chats no longer fit


@dataclass(frozen=True)
class DeviceMemory:
    """One offload device as ggml reports it."""

    name: str
    free: int
    total: int


@dataclass(frozen=True)
class ModelShape:
    """What offloading a model costs, from its GGUF header."""

    n_layers: int
    layer_bytes: int  # weights of one repeating block (mean)
    output_bytes: int  # the output head and final norm (offloaded with the last layer)
    kv_bytes_per_token_layer: float  # K + V of one token in one layer, at the cache types
    n_embd: int
    n_vocab: int
    n_ctx_train: int = 0


@dataclass(frozen=True)
class Offload:
    """The decision for one model: layers on GPUs, the KV it was sized for, and why."""

    layers: int  # what llama.cpp gets as n_gpu_layers (-1 = every layer and the output)
    n_layers: int
    ctx_size: int
    parallel: int
    gpu_bytes: int  # estimated device memory it takes, all devices together
    per_device: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    @property
    def offloaded(self) -> int:
        """Repeating layers on GPUs."""
        return self.n_layers if self.layers < 0 else min(self.layers, self.n_layers)


def margin(device: DeviceMemory) -> int:
    """Free memory left alone on a device: 5 % of it, at least 256 MiB (the display, other
    programs, llama.cpp's own allocations outside these estimates)."""
    return max(256 << 20, device.total // 20)


def compute_bytes(shape: ModelShape, ubatch: int) -> int:
    """llama.cpp's compute buffer for one micro-batch, roughly: logits and activations."""
    return ubatch * (shape.n_vocab + 16 * shape.n_embd) * 4


def plan_offload(
    shape: ModelShape,
    devices: list[DeviceMemory],
    ctx_size: int,
    parallel: int,
    *,
    may_shrink: bool,
    ubatch: int = 512,
) -> Offload:
    """Layers to offload so weights, KV and compute fit the devices' free memory."""
    if not devices:
        return Offload(0, shape.n_layers, ctx_size, parallel, 0, reason="no GPU device")
    budget = sum(max(0, d.free - margin(d)) for d in devices)
    compute = compute_bytes(shape, ubatch)

    def kv(ctx: int, par: int, layers: int) -> int:
        return int(shape.kv_bytes_per_token_layer * ctx * par * layers)

    def whole(ctx: int, par: int) -> int:
        n = shape.n_layers
        return n * shape.layer_bytes + shape.output_bytes + kv(ctx, par, n) + compute

    candidates = [(ctx_size, parallel)]
    if may_shrink:
        par, ctx = parallel, ctx_size
        while par > 1:
            par //= 2
            candidates.append((ctx, par))
        while ctx // 2 >= MIN_CTX:
            ctx //= 2
            candidates.append((ctx, 1))
    for ctx, par in candidates:
        need = whole(ctx, par)
        if need <= budget:
            why = "the whole model fits"
            if (ctx, par) != (ctx_size, parallel):
                why += f" with {par} slot(s) of {ctx} tokens (neither was set)"
            return _spread(Offload(-1, shape.n_layers, ctx, par, need, reason=why), devices)
    per_layer = shape.layer_bytes + kv(ctx_size, parallel, 1)
    n = max(0, min(shape.n_layers, (budget - compute) // per_layer)) if per_layer else 0
    if n == 0:
        return Offload(
            0, shape.n_layers, ctx_size, parallel, 0, reason="not one layer fits the GPU memory"
        )
    need = n * per_layer + compute
    why = f"{n} of {shape.n_layers} layers fit"
    return _spread(Offload(int(n), shape.n_layers, ctx_size, parallel, need, reason=why), devices)


def _spread(plan: Offload, devices: list[DeviceMemory]) -> Offload:
    """Per-device shares: llama.cpp splits layers in proportion to free memory by default."""
    free = [max(0, d.free - margin(d)) for d in devices]
    total = sum(free) or 1
    shares = {d.name: plan.gpu_bytes * f // total for d, f in zip(devices, free, strict=True)}
    return Offload(
        plan.layers,
        plan.n_layers,
        plan.ctx_size,
        plan.parallel,
        plan.gpu_bytes,
        shares,
        plan.reason,
    )


DeviceSource = Callable[[], list["DeviceMemory"]]


def local_devices() -> list[DeviceMemory]:
    """The local offload devices (GPUs, else integrated GPUs) and their free memory now."""
    from daemon.engine.native.ggml_rpc import local_offload_devices

    return [DeviceMemory(d.name, d.free, d.total) for d in local_offload_devices()]


def plan_for(
    path: Path,
    devices: list[DeviceMemory],
    ctx_size: int,
    parallel: int,
    *,
    may_shrink: bool,
    ubatch: int = 512,
    cache_types: tuple[str, str] = ("f16", "f16"),
) -> Offload:
    """`plan_offload` for a GGUF file: its shape from the header, its context capped at what
    it was trained for."""
    shape = model_shape(path, *cache_types)
    ctx = min(ctx_size, shape.n_ctx_train) if shape.n_ctx_train else ctx_size
    return plan_offload(shape, devices, ctx, parallel, may_shrink=may_shrink, ubatch=ubatch)


def model_shape(path: Path, cache_type_k: str = "f16", cache_type_v: str = "f16") -> ModelShape:
    """A GGUF's offload costs from its header (no weights are read)."""
    h = header(path)

    def field_value(key: str, default: int = 0) -> int:
        try:
            return int(h.get(key, default))
        except (TypeError, ValueError):
            return default

    arch = str(h.get(gguf.Keys.General.ARCHITECTURE, ""))
    n_layers = field_value(f"{arch}.block_count")
    n_embd = field_value(f"{arch}.embedding_length")
    heads = field_value(f"{arch}.attention.head_count", 1) or 1
    heads_kv = field_value(f"{arch}.attention.head_count_kv", heads) or heads
    k_len = field_value(f"{arch}.attention.key_length", n_embd // heads)
    v_len = field_value(f"{arch}.attention.value_length", n_embd // heads)
    blocks = sum(t.n_bytes for t in h.tensors if t.name.startswith("blk."))
    by_name = {t.name: t.n_bytes for t in h.tensors}
    # A tied output head (no output.weight) is the token embedding, copied to the GPU.
    head = by_name.get("output.weight", by_name.get("token_embd.weight", 0))
    output = head + by_name.get("output_norm.weight", 0)
    vocab = field_value(f"{arch}.vocab_size") or h.length("tokenizer.ggml.tokens")
    kv = heads_kv * (
        k_len * KV_ELEMENT_BYTES[cache_type_k] + v_len * KV_ELEMENT_BYTES[cache_type_v]
    )
    return ModelShape(
        n_layers=n_layers,
        layer_bytes=blocks // n_layers if n_layers else 0,
        output_bytes=output,
        kv_bytes_per_token_layer=kv,
        n_embd=n_embd,
        n_vocab=vocab,
        n_ctx_train=field_value(f"{arch}.context_length"),
    )
