"""Convert a PEFT LoRA adapter (adapter_config.json + safetensors) to a GGUF adapter.

The layout is what llama.cpp's convert_lora_to_gguf.py writes and llama_adapter_lora_init
reads: general.type = "adapter", adapter.type = "lora", adapter.lora.alpha, and for each
adapted weight `<gguf name>.lora_a` (r × in) and `<gguf name>.lora_b` (out × r). llama.cpp
scales B·A by scale · alpha / r, PEFT's own scaling, so a converted adapter at scale s adds
s · (alpha / r) · B·A to the weight, as PEFT's merge does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from quantize.archs import Arch, arch_for
from quantize.atomic import atomic_output
from quantize.checkpoint import Checkpoint, TensorRef
from quantize.convert import gguf_name, read_config
from quantize.errors import BrokenCheckpoint, UnknownType
from quantize.outtypes import encode

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# An adapter's tensors are small and stay float: llama.cpp adds B·(A·x) in these types.
ADAPTER_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16}
_PEFT_PREFIX = "base_model.model."
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight: its GGUF name and kind, and the A and B tensors in the checkpoint."""

    name: str
    kind: gguf.MODEL_TENSOR
    a: TensorRef
    b: TensorRef


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """adapter_config.json, checked for what llama.cpp's adapters can express."""
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise BrokenCheckpoint(f"{directory}: no {ADAPTER_CONFIG} (a PEFT adapter directory)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise BrokenCheckpoint(f"{ADAPTER_CONFIG}: invalid JSON ({e})") from e
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise BrokenCheckpoint(f"peft_type {cfg.get('peft_type')!r} is not LORA")
    for flag in ("use_dora", "lora_bias"):
        if cfg.get(flag):
            raise BrokenCheckpoint(f"{flag} adapters have no llama.cpp equivalent")
    if cfg.get("modules_to_save"):
        raise BrokenCheckpoint("modules_to_save (fully trained layers) cannot be an adapter")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise BrokenCheckpoint("per-module rank_pattern/alpha_pattern is not supported")
    r = cfg.get("r")
    if not isinstance(r, int) or r <= 0:
        raise BrokenCheckpoint(f"{ADAPTER_CONFIG}: r must be a positive integer, got {r!r}")
    return cfg


def lora_alpha(cfg: dict[str, Any]) -> float:
    """The alpha llama.cpp wants (it scales by alpha / r): rsLoRA's alpha / √r folded in."""
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha") or r)
    return alpha * math.sqrt(r) if cfg.get("use_rslora") else alpha


def base_directory(cfg: dict[str, Any], base: Path | None) -> Path:
    """The base model's checkpoint directory (its config.json names the architecture)."""
    if base is not None:
        return base
    named = cfg.get("base_model_name_or_path")
    if named and (Path(named) / "config.json").is_file():
        return Path(named)
    raise BrokenCheckpoint(
        f"the base model {named!r} is not a local directory with a config.json: pass --base DIR"
    )


def plan_pairs(arch: Arch, config: dict[str, Any], checkpoint: Checkpoint) -> list[LoraPair]:
    """Pair every lora_A with its lora_B and map the base weight's name to GGUF."""
    n_blocks = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    tmap = gguf.get_tensor_name_map(arch.gguf_arch, n_blocks)
    halves: dict[str, dict[str, TensorRef]] = {}
    for ref in checkpoint:
        name = ref.name.removeprefix(_PEFT_PREFIX)
        for suffix, half in ((_A, "a"), (_B, "b")):
            if name.endswith(suffix):
                halves.setdefault(name[: -len(suffix)] + ".weight", {})[half] = ref
                break
        else:
            raise BrokenCheckpoint(
                f"tensor {ref.name!r} is not a lora_A/lora_B weight (embedding adapters and "
                "trained full layers are not supported)"
            )
    pairs: list[LoraPair] = []
    for base_name, ab in sorted(halves.items()):
        if set(ab) != {"a", "b"}:
            raise BrokenCheckpoint(f"{base_name}: lora_A and lora_B must both be present")
        mapped = gguf_name(arch, tmap, base_name)
        if mapped is None:
            raise BrokenCheckpoint(f"{base_name} is a tensor the GGUF model does not have")
        name, kind = mapped
        a, b = ab["a"], ab["b"]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise BrokenCheckpoint(f"{base_name}: lora_A {a.shape} and lora_B {b.shape} differ")
        pairs.append(LoraPair(name, kind, a, b))
    if not pairs:
        raise BrokenCheckpoint("the adapter has no lora_A/lora_B tensors")
    return pairs


def convert_lora(
    src: Path | str,
    out_path: Path | str,
    base: Path | str | None = None,
    out_type: str = "f16",
    progress: bool = True,
) -> Path:
    """Convert PEFT adapter directory `src` (base model config from `base`) to a GGUF adapter."""
    directory, target = Path(src), Path(out_path)
    qtype = ADAPTER_TYPES.get(out_type.lower())
    if qtype is None:
        raise UnknownType(f"adapters are written as {' or '.join(ADAPTER_TYPES)}, not {out_type}")
    cfg = read_adapter_config(directory)
    base_dir = base_directory(cfg, Path(base) if base is not None else None)
    config = read_config(base_dir)
    _, arch = arch_for(config)
    checkpoint = Checkpoint(directory)
    pairs = plan_pairs(arch, config, checkpoint)
    alpha = lora_alpha(cfg)
    log.info("adapter %s: %s, %d weights, alpha %g", directory, arch.name, len(pairs), alpha)
    with atomic_output(target) as tmp:
        writer = gguf.GGUFWriter(None, arch.name)
        try:
            writer.add_name(directory.name or "adapter")
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            for p in pairs:
                a = checkpoint.load(p.a)
                b = checkpoint.load(p.b)
                # B's rows are the weight's output rows: the base converter's row transforms
                # (Q/K rope permutation) apply to B; A reads the input and stays as it is.
                transform = arch.transforms.get(p.kind)
                if transform is not None:
                    b = transform(b, config)
                writer.add_tensor(p.name + ".lora_a", encode(a, qtype, p.a.name))
                writer.add_tensor(p.name + ".lora_b", encode(b, qtype, p.b.name))
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    return target
