"""Lazy access to a checkpoint's safetensors files: metadata up front, one tensor at a time."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from quantize.errors import BrokenCheckpoint

INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives and what it looks like, without its data."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. "F32", "BF16"


class Checkpoint:
    """The tensors of a Hugging Face checkpoint directory, read lazily."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tensors: dict[str, TensorRef] = {}
        for file in self._files():
            self._index_file(file)
        if not self.tensors:
            raise BrokenCheckpoint(f"{directory}: no tensors in the safetensors files")

    def _files(self) -> list[Path]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise BrokenCheckpoint(f"{index}: unreadable weight map ({e})") from e
            files = [self.directory / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise BrokenCheckpoint(f"{self.directory}: missing shards {', '.join(missing)}")
            return files
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise BrokenCheckpoint(
                f"{self.directory}: no *.safetensors files (pytorch .bin is not supported)"
            )
        return files

    def _index_file(self, file: Path) -> None:
        try:
            with safe_open(str(file), framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    sl = f.get_slice(name)
                    self.tensors[name] = TensorRef(
                        name, file, tuple(sl.get_shape()), sl.get_dtype()
                    )
        except (OSError, ValueError, RuntimeError) as e:
            raise BrokenCheckpoint(f"{file.name}: not a readable safetensors file ({e})") from e
        except Exception as e:  # safetensors raises its own SafetensorError type
            raise BrokenCheckpoint(f"{file.name}: not a readable safetensors file ({e})") from e

    def __iter__(self) -> Iterator[TensorRef]:
        return iter(self.tensors.values())

    def load(self, ref: TensorRef) -> np.ndarray:
        """Read one tensor as float32/float16 (bf16 widened to float32)."""
        try:
            if ref.dtype == "BF16":
                return _load_bf16(ref)
            with safe_open(str(ref.file), framework="numpy") as f:
                return f.get_tensor(ref.name)
        except BrokenCheckpoint:
            raise
        except Exception as e:
            raise BrokenCheckpoint(f"{ref.file.name}: cannot read tensor {ref.name} ({e})") from e


def _load_bf16(ref: TensorRef) -> np.ndarray:
    """numpy has no bfloat16: map the raw bytes and widen them to float32 exactly."""
    with open(ref.file, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    begin, end = header[ref.name]["data_offsets"]
    count = int(np.prod(ref.shape, dtype=np.int64))
    if end - begin != 2 * count:
        raise BrokenCheckpoint(
            f"{ref.file.name}: tensor {ref.name} has {end - begin} bytes for {count} bf16 values"
        )
    raw = np.memmap(ref.file, dtype="<u2", mode="r", offset=8 + header_len + begin, shape=(count,))
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(ref.shape)
