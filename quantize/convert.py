"""Convert a Hugging Face checkpoint directory (safetensors) to a GGUF file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from quantize.archs import Arch, arch_for
from quantize.atomic import atomic_output
from quantize.checkpoint import Checkpoint, TensorRef
from quantize.errors import BrokenCheckpoint
from quantize.outtypes import OutType, encode, nbytes, outtype, tensor_type
from quantize.rope import warn_sliding_window
from quantize.vocab import load_vocab

log = logging.getLogger(__name__)

POOLING_MODES: dict[str, gguf.PoolingType] = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its source, GGUF name, type and (pre-transform) shape."""

    source: TensorRef
    name: str
    kind: gguf.MODEL_TENSOR
    qtype: gguf.GGMLQuantizationType


def read_config(directory: Path) -> dict[str, Any]:
    """config.json as a dict, with sentence-transformers pooling folded in."""
    path = directory / "config.json"
    if not path.is_file():
        raise BrokenCheckpoint(f"{directory}: no config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise BrokenCheckpoint(f"config.json: invalid JSON ({e})") from e
    pooling = _sentence_transformers_pooling(directory)
    if pooling is not None:
        config["_edged_pooling"] = int(pooling)
    return config


def _sentence_transformers_pooling(directory: Path) -> gguf.PoolingType | None:
    """Pooling declared by a sentence-transformers Pooling module, if the repo has one."""
    modules = directory / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith(".Pooling"):
            cfg = directory / module.get("path", "") / "config.json"
            if cfg.is_file():
                settings = json.loads(cfg.read_text())
                for key, pooling in POOLING_MODES.items():
                    if settings.get(key):
                        return pooling
    return None


def gguf_name(
    arch: Arch, tmap: gguf.TensorNameMap, hf_name: str
) -> tuple[str, gguf.MODEL_TENSOR] | None:
    """Map an HF tensor name to (GGUF name, tensor kind); None when the tensor is not needed.

    The one name table: the LoRA adapter converter (quantize.lora) maps through it too."""
    for prefix in arch.strip_prefixes:
        if hf_name.startswith(prefix):
            hf_name = hf_name[len(prefix) :]
    if hf_name.startswith(arch.skip_prefixes) or hf_name.endswith(arch.skip_suffixes):
        return None
    hf_name = arch.renames.get(hf_name, hf_name)
    for suffix in (".weight", ".bias"):
        if hf_name.endswith(suffix):
            found = tmap.get_type_and_name(hf_name[: -len(suffix)])
            if found is not None:
                kind, name = found
                return name + suffix, kind
    found = tmap.get_type_and_name(hf_name)
    if found is not None:
        return found[1], found[0]
    raise BrokenCheckpoint(f"tensor {hf_name!r} has no GGUF name for architecture {arch.name}")


def plan(
    arch: Arch, config: Mapping[str, Any], checkpoint: Checkpoint, out: OutType
) -> list[PlannedTensor]:
    """Decide name and type of every output tensor before any data is read."""
    n_blocks = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    tmap = gguf.get_tensor_name_map(arch.gguf_arch, n_blocks)
    allowed = set(gguf.MODEL_TENSORS[arch.gguf_arch])
    planned: list[PlannedTensor] = []
    for ref in checkpoint:
        mapped = gguf_name(arch, tmap, ref.name)
        if mapped is None:
            continue
        name, kind = mapped
        if kind not in allowed:
            raise BrokenCheckpoint(
                f"tensor {ref.name!r} ({kind.name}) is not part of architecture {arch.name}"
            )
        qtype = tensor_type(out, ref.shape, name, kind in arch.keep_f32)
        planned.append(PlannedTensor(ref, name, kind, qtype))
    _check_blocks(planned, n_blocks)
    return planned


def _check_blocks(planned: list[PlannedTensor], n_blocks: int) -> None:
    """Every block must have the same tensor kinds: a missing one means a broken checkpoint."""
    per_block: dict[int, set[str]] = {i: set() for i in range(n_blocks)}
    for t in planned:
        parts = t.name.split(".")
        if parts[0] == "blk":
            per_block.setdefault(int(parts[1]), set()).add(".".join(parts[2:]))
    expected = set().union(*per_block.values()) if per_block else set()
    for block, names in sorted(per_block.items()):
        missing = expected - names
        if missing:
            raise BrokenCheckpoint(f"block {block} lacks tensors: {', '.join(sorted(missing))}")


def _model_name(directory: Path, config: Mapping[str, Any]) -> str:
    return str(config.get("_name_or_path") or directory.name).rstrip("/").split("/")[-1] or "model"


def convert(
    src: Path | str,
    out_path: Path | str,
    out_type: str = "f16",
    progress: bool = True,
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Convert checkpoint directory src to a GGUF file at out_path; returns out_path."""
    directory, target = Path(src), Path(out_path)
    out = outtype(out_type)
    config = read_config(directory)
    _, arch = arch_for(config)
    kvs = arch.kv_pairs(config)
    generated = arch.generated_tensors(config)
    warn_sliding_window(config)
    vocab = load_vocab(directory, config, arch.tokenizer)
    checkpoint = Checkpoint(directory)
    planned = plan(arch, config, checkpoint, out)
    clash = {t.name for t in planned} & generated.keys()
    if clash:
        raise BrokenCheckpoint(f"checkpoint already has tensors {', '.join(sorted(clash))}")
    log.info("converting %s (%s, %d tensors) to %s", directory, arch.name, len(planned), out.name)

    with atomic_output(target) as tmp:
        writer = gguf.GGUFWriter(None, arch.name)
        try:
            writer.add_name(_model_name(directory, config))
            writer.add_type(gguf.GGUFType.MODEL)
            for key, value in kvs.items():
                add_kv(writer, key, value)
            writer.add_file_type(int(out.file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to(writer, directory)
            for t in planned:
                dtype = {gguf.GGMLQuantizationType.F16: np.float16}.get(t.qtype, np.float32)
                raw = (
                    None
                    if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
                    else t.qtype
                )
                writer.add_tensor_info(
                    t.name, t.source.shape, np.dtype(dtype), nbytes(t.source.shape, t.qtype), raw
                )
            for name, data in generated.items():  # small, F32 whatever the output type
                writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes)
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            bar = tqdm(planned, desc="Converting", unit="tensor", disable=not progress)
            for t in bar:
                writer.write_tensor_data(_tensor_data(arch, config, checkpoint, t))
                if on_tensor is not None:
                    on_tensor(t.name)
            for data in generated.values():
                writer.write_tensor_data(data)
        finally:
            writer.close()
    return target


def _tensor_data(
    arch: Arch, config: Mapping[str, Any], checkpoint: Checkpoint, t: PlannedTensor
) -> np.ndarray:
    """Load, transform and encode one tensor (the only tensor held in memory)."""
    data = checkpoint.load(t.source)
    if tuple(data.shape) != t.source.shape:
        raise BrokenCheckpoint(
            f"tensor {t.source.name}: shape {data.shape} != declared {t.source.shape}"
        )
    transform = arch.transforms.get(t.kind)
    if transform is not None:
        data = transform(data, config)
    return encode(data, t.qtype, t.source.name)


def add_kv(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Write one metadata value under the GGUF type its Python type implies."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))
