"""Convert the vision projector of a Hugging Face vision-language checkpoint to an mmproj GGUF.

The layout is what llama.cpp's `convert_hf_to_gguf.py --mmproj` writes and libmtmd's clip
loader reads: general.architecture = "clip", general.type = "mmproj", `clip.projector_type`,
`clip.has_vision_encoder`, the encoder's shape under `clip.vision.*` (image and patch size,
widths, block and head counts, normalisation epsilon, image mean and std, projection_dim =
the language model's embedding width), and the tensors `v.patch_embd`, `v.position_embd`,
`v.blk.N.{ln1,attn_q,attn_k,attn_v,attn_out,ln2,ffn_up,ffn_down}`, `v.post_ln` and the
projector's own (`mm.model.fc` for Idefics3). The language model is converted separately.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from quantize.atomic import atomic_output
from quantize.checkpoint import Checkpoint, TensorRef
from quantize.convert import add_kv, read_config
from quantize.errors import BrokenCheckpoint, UnsupportedArchitecture
from quantize.outtypes import OutType, encode, nbytes, outtype, tensor_type

log = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
Config = Mapping[str, Any]
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class Projector:
    """What one family of vision-language checkpoints needs to become an mmproj GGUF."""

    projector_type: str  # clip.projector_type, one libmtmd knows
    vision_prefixes: tuple[str, ...]  # HF names of the encoder's and projector's tensors
    # HF name fragments kept F32 whatever the output type: clip's patch convolution runs in
    # its kernel's type, so an F16 kernel would round the normalised pixels to F16.
    keep_f32: tuple[str, ...] = ()
    vision_defaults: Mapping[str, Any] = field(default_factory=dict)
    extra_kvs: Callable[[Config, Config, Config], dict[str, Any]] = lambda g, v, p: {}
    # Every tensor an encoder of this family must have (block tensors are checked apart).
    required: tuple[str, ...] = ()


def _idefics3_kvs(config: Config, vision: Config, preproc: Config) -> dict[str, Any]:
    size = preproc.get("size") or {}
    return {
        gguf.Keys.ClipVision.Attention.LAYERNORM_EPS: float(vision.get("layer_norm_eps", 1e-5)),
        gguf.Keys.ClipVision.Projector.SCALE_FACTOR: int(config.get("scale_factor", 2)),
        gguf.Keys.ClipVision.USE_GELU: True,
        # The longest edge an image is resized to before it is cut into image_size tiles.
        gguf.Keys.ClipVision.PREPROC_IMAGE_SIZE: int(
            size.get("longest_edge", vision["image_size"])
        ),
    }


_IDEFICS3 = Projector(
    projector_type=gguf.VisionProjectorType.IDEFICS3,
    vision_prefixes=("model.vision_model.", "model.connector."),
    keep_f32=(".embeddings.",),
    # SmolVLM2's config.json leaves these out; the values are transformers' defaults.
    vision_defaults={"hidden_size": 1152, "num_attention_heads": 16, "intermediate_size": 3072},
    extra_kvs=_idefics3_kvs,
    required=("v.patch_embd.weight", "v.position_embd.weight", "mm.model.fc.weight"),
)

PROJECTORS: dict[str, Projector] = {
    "Idefics3ForConditionalGeneration": _IDEFICS3,
    "SmolVLMForConditionalGeneration": _IDEFICS3,
}


@dataclass(frozen=True)
class VisionShape:
    """The encoder's hyperparameters, as the clip.vision.* keys name them."""

    image_size: int
    patch_size: int
    hidden: int
    ffn: int
    blocks: int
    heads: int
    projection_dim: int  # the language model's embedding width


def projector_for(config: Config) -> tuple[str, Projector]:
    """The (HF architecture, table) of a config.json, or UnsupportedArchitecture."""
    names = config.get("architectures") or []
    if not names:
        raise BrokenCheckpoint("config.json has no 'architectures' list")
    for name in names:
        if name in PROJECTORS:
            return name, PROJECTORS[name]
    supported = ", ".join(sorted(PROJECTORS))
    raise UnsupportedArchitecture(
        f"architecture {names[0]!r} has no vision projector we convert (supported: {supported})"
    )


def vision_config(config: Config, projector: Projector) -> dict[str, Any]:
    """config.json's vision_config with the family's defaults filled in."""
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise BrokenCheckpoint("config.json has no vision_config (not a vision-language model)")
    return {**projector.vision_defaults, **vision}


def vision_shape(config: Config, vision: Config) -> VisionShape:
    """Read the encoder's shape; every value must be a positive integer."""
    text = {**config, **(config.get("text_config") or {})}
    values = {
        "image_size": vision.get("image_size"),
        "patch_size": vision.get("patch_size"),
        "hidden": vision.get("hidden_size"),
        "ffn": vision.get("intermediate_size"),
        "blocks": vision.get("num_hidden_layers"),
        "heads": vision.get("num_attention_heads"),
        "projection_dim": text.get("hidden_size") or text.get("n_embd"),
    }
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BrokenCheckpoint(f"config.json: {key} must be a positive integer, got {value!r}")
    shape = VisionShape(**values)
    if shape.image_size % shape.patch_size:
        raise BrokenCheckpoint(
            f"image_size {shape.image_size} is not a multiple of patch_size {shape.patch_size}"
        )
    if shape.hidden % shape.heads:
        raise BrokenCheckpoint(
            f"hidden_size {shape.hidden} is not divisible by {shape.heads} heads"
        )
    return shape


def read_preprocessor(directory: Path) -> dict[str, Any]:
    """preprocessor_config.json: image mean, std and sizes (llama.cpp's converter needs it too)."""
    path = directory / PREPROCESSOR_CONFIG
    if not path.is_file():
        raise BrokenCheckpoint(f"{directory}: no {PREPROCESSOR_CONFIG} (image mean and std)")
    try:
        preproc = json.loads(path.read_text())
    except ValueError as e:
        raise BrokenCheckpoint(f"{PREPROCESSOR_CONFIG}: invalid JSON ({e})") from e
    for key in ("image_mean", "image_std"):
        values = preproc.get(key)
        if not (isinstance(values, list) and len(values) == 3):
            raise BrokenCheckpoint(f"{PREPROCESSOR_CONFIG}: {key} must be 3 numbers")
    if not all(float(s) > 0 for s in preproc["image_std"]):
        raise BrokenCheckpoint(f"{PREPROCESSOR_CONFIG}: image_std must be positive")
    return preproc


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its source, GGUF name and type."""

    source: TensorRef
    name: str
    qtype: Q


def plan(
    projector: Projector, shape: VisionShape, checkpoint: Checkpoint, out: OutType
) -> list[PlannedTensor]:
    """Name and type every encoder and projector tensor; the language model's are left out."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, shape.blocks)
    planned: list[PlannedTensor] = []
    for ref in checkpoint:
        if not ref.name.startswith(projector.vision_prefixes):
            continue
        name = _gguf_name(tmap, ref.name)
        f32 = any(part in ref.name for part in projector.keep_f32)
        planned.append(PlannedTensor(ref, name, tensor_type(out, ref.shape, name, f32)))
    _check(projector, shape, planned)
    return planned


def _gguf_name(tmap: gguf.TensorNameMap, hf_name: str) -> str:
    for suffix in (".weight", ".bias"):
        if hf_name.endswith(suffix):
            found = tmap.get_type_and_name(hf_name[: -len(suffix)])
            if found is not None:
                return found[1] + suffix
    raise BrokenCheckpoint(f"vision tensor {hf_name!r} has no mmproj GGUF name")


def _check(projector: Projector, shape: VisionShape, planned: list[PlannedTensor]) -> None:
    """Refuse a checkpoint clip would reject or misread: missing tensors, wrong sizes."""
    by_name = {t.name: t.source.shape for t in planned}
    missing = [n for n in projector.required if n not in by_name]
    blocks: dict[int, set[str]] = {i: set() for i in range(shape.blocks)}
    for name in by_name:
        parts = name.split(".")
        if parts[:2] == ["v", "blk"]:
            block = int(parts[2])
            if block >= shape.blocks:
                raise BrokenCheckpoint(f"{name}: block {block} beyond num_hidden_layers")
            blocks[block].add(".".join(parts[3:]))
    expected = set().union(*blocks.values())
    for block, names in sorted(blocks.items()):
        missing += [f"v.blk.{block}.{n}" for n in sorted(expected - names)]
    if not expected:
        missing.append("v.blk.*")
    if missing:
        raise BrokenCheckpoint(f"the vision encoder lacks tensors: {', '.join(missing)}")
    n_patches = (shape.image_size // shape.patch_size) ** 2
    expect = {
        "v.patch_embd.weight": (shape.hidden, 3, shape.patch_size, shape.patch_size),
        "v.position_embd.weight": (n_patches, shape.hidden),
    }
    for name, want in expect.items():
        if tuple(by_name[name]) != want:
            raise BrokenCheckpoint(f"{name}: shape {by_name[name]} != {want} from config.json")
    fc = by_name.get("mm.model.fc.weight")
    if fc is not None and fc[0] != shape.projection_dim:
        raise BrokenCheckpoint(
            f"the projector writes {fc[0]} values per token but the language model's "
            f"hidden_size is {shape.projection_dim}"
        )


def convert_mmproj(
    src: Path | str,
    out_path: Path | str,
    out_type: str = "f16",
    progress: bool = True,
) -> Path:
    """Convert the vision projector of checkpoint directory src to an mmproj GGUF at out_path."""
    directory, target = Path(src), Path(out_path)
    out = outtype(out_type)
    config = read_config(directory)
    _, projector = projector_for(config)
    vision = vision_config(config, projector)
    shape = vision_shape(config, vision)
    preproc = read_preprocessor(directory)
    checkpoint = Checkpoint(directory)
    planned = plan(projector, shape, checkpoint, out)
    log.info(
        "converting the %s projector of %s (%d tensors) to %s",
        projector.projector_type,
        directory,
        len(planned),
        out.name,
    )
    K = gguf.Keys.ClipVision
    with atomic_output(target) as tmp:
        writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
        try:
            writer.add_type(gguf.GGUFType.MMPROJ)
            writer.add_name(_model_name(directory, config))
            writer.add_file_type(int(out.file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_clip_has_vision_encoder(True)
            writer.add_clip_projector_type(projector.projector_type)
            writer.add_uint32(K.PROJECTION_DIM, shape.projection_dim)
            writer.add_uint32(K.IMAGE_SIZE, shape.image_size)
            writer.add_uint32(K.PATCH_SIZE, shape.patch_size)
            writer.add_uint32(K.EMBEDDING_LENGTH, shape.hidden)
            writer.add_uint32(K.FEED_FORWARD_LENGTH, shape.ffn)
            writer.add_uint32(K.BLOCK_COUNT, shape.blocks)
            writer.add_uint32(K.Attention.HEAD_COUNT, shape.heads)
            writer.add_array(K.IMAGE_MEAN, [float(v) for v in preproc["image_mean"]])
            writer.add_array(K.IMAGE_STD, [float(v) for v in preproc["image_std"]])
            for key, value in projector.extra_kvs(config, vision, preproc).items():
                add_kv(writer, key, value)
            for t in planned:
                dtype = np.float16 if t.qtype == Q.F16 else np.float32
                raw = None if t.qtype in (Q.F32, Q.F16) else t.qtype
                writer.add_tensor_info(
                    t.name, t.source.shape, np.dtype(dtype), nbytes(t.source.shape, t.qtype), raw
                )
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in tqdm(planned, desc="Converting", unit="tensor", disable=not progress):
                data = checkpoint.load(t.source)
                if tuple(data.shape) != t.source.shape:
                    raise BrokenCheckpoint(
                        f"tensor {t.source.name}: shape {data.shape} != declared {t.source.shape}"
                    )
                writer.write_tensor_data(encode(data, t.qtype, t.source.name))
        finally:
            writer.close()
    return target


def _model_name(directory: Path, config: Config) -> str:
    name = str(config.get("_name_or_path") or directory.name).rstrip("/").split("/")[-1]
    return name or "mmproj"
