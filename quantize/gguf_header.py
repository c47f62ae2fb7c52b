"""A GGUF file's key-value metadata and tensor table, read without its weights.

gguf-py's `GGUFReader` builds a numpy view for every element of every array, so a header
with a 49,152-token vocabulary takes 2.5–3.5 s to read; the daemon reads headers when it
starts, fits layers, and answers `/api/show` and `/api/tags`. This reader walks the same
layout (gguf-py's constants name the types) and keeps arrays as places in the file, decoded
only when asked for (`GGUFHeader.array`): the same header reads in about 0.1 s.

The file is read, never memory-mapped: a model file truncated in place while its header is
read (`cp` over it) must be a ValueError, not a SIGBUS that ends the daemon.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

T = gguf.GGUFValueType
_SCALARS: dict[int, str] = {
    T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
    T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d",
}  # fmt: skip
_STRUCTS = {e + f: struct.Struct(e + f) for e in "<>" for f in set(_SCALARS.values())}
_MAGIC = b"GGUF"
# Far above any real file (dozens of keys; tens of thousands of tensors in the largest
# mixtures of experts), far below what a crafted header could claim to fill memory with.
_MAX_KV, _MAX_TENSORS = 1 << 16, 1 << 20
_FIRST_READ = 1 << 20  # most headers fit; a larger one is read again, four times as much
# The largest real headers (262,144-token vocabularies, tensor tables of big mixtures) take a
# few MiB; a header said to run further is damaged, and is not read into memory.
_MAX_HEADER = 64 << 20
_MAX_NESTING = 4  # llama.cpp writes arrays of scalars and strings; nesting is rare


def file_type_name(ftype: object) -> str | None:
    """A `general.file_type` as llama.cpp names it (Q4_K_M, F16); None for none or unknown."""
    try:
        return gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_")  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ArrayRef:
    """An array value left in the file: its item type, its length and where its items start."""

    item_type: int
    length: int
    offset: int
    end: int


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table."""

    name: str
    shape: tuple[int, ...]
    type: int
    offset: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        """Bytes of the tensor's data (0 for a type this gguf-py does not know)."""
        try:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.type)]
        except (ValueError, KeyError):
            return 0
        return self.n_elements * size // block


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says before its data: version, metadata, tensor table.

    `fields` holds scalars and strings as Python values and arrays as `ArrayRef`s."""

    path: Path
    version: int
    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    endian: str

    def get(self, key: str, default: Any = None) -> Any:
        """A scalar or string value; `default` for a missing key or an array."""
        v = self.fields.get(key, default)
        return default if isinstance(v, ArrayRef) else v

    def length(self, key: str) -> int:
        """The number of items of an array value (0 when missing or not an array)."""
        v = self.fields.get(key)
        return v.length if isinstance(v, ArrayRef) else 0

    def array(self, key: str) -> list[Any] | None:
        """An array value's items, read from the file now (None when missing or not an array)."""
        ref = self.fields.get(key)
        if not isinstance(ref, ArrayRef):
            return None
        with open(self.path, "rb") as f:
            f.seek(ref.offset)
            buf = f.read(ref.end - ref.offset)
        if len(buf) < ref.end - ref.offset:
            raise ValueError("the GGUF file is shorter than its header says")
        return _Cursor(buf, 0, self.endian, eof=True).items(ref.item_type, ref.length)


class _NeedMore(Exception):
    """The header runs past the bytes read so far (not past the file's end)."""


class _Cursor:
    """A position in the bytes read from the start of a file; every read checks the bounds.
    Past the end of the file it is a ValueError; past what was read (`eof` false), _NeedMore."""

    def __init__(self, buf: bytes, pos: int, endian: str, *, eof: bool) -> None:
        self.buf, self.pos, self.endian, self.eof = buf, pos, endian, eof

    def _short(self, what: str) -> Exception:
        return ValueError(what) if self.eof else _NeedMore()

    def unpack(self, fmt: str) -> Any:
        s = _STRUCTS[self.endian + fmt]
        if self.pos + s.size > len(self.buf):
            raise self._short("the GGUF header ends early")
        (v,) = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise self._short("a GGUF string runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype == T.STRING:
            return self.string()
        if vtype == T.ARRAY:
            if depth >= _MAX_NESTING:
                raise ValueError("GGUF arrays nested too deep")
            item_type, length = self.unpack("I"), self.unpack("Q")
            start = self.pos
            self.skip_items(item_type, length, depth + 1)
            return ArrayRef(item_type, length, start, self.pos)
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(fmt)

    def skip_items(self, item_type: int, length: int, depth: int) -> None:
        fmt = _SCALARS.get(item_type)
        if fmt is not None:  # fixed-size items: one jump
            self.pos = self._end(length * struct.calcsize(fmt))
            return
        if item_type == T.STRING:  # the vocabulary: step over each string by its length
            for _ in range(length):
                self.pos = self._end(self.unpack("Q"))
            return
        for _ in range(length):  # nested arrays: each says its own length
            self.value(item_type, depth)

    def items(self, item_type: int, length: int, depth: int = 0) -> list[Any]:
        fmt = _SCALARS.get(item_type)
        if fmt is not None:
            end = self._end(length * struct.calcsize(fmt))
            out = list(struct.unpack_from(f"{self.endian}{length}{fmt}", self.buf, self.pos))
            self.pos = end
            return out
        if item_type != T.ARRAY:
            return [self.value(item_type) for _ in range(length)]
        if depth >= _MAX_NESTING:
            raise ValueError("GGUF arrays nested too deep")
        return [self.items(self.unpack("I"), self.unpack("Q"), depth + 1) for _ in range(length)]

    def _end(self, n: int) -> int:
        """Where `n` bytes from here end, checked against the file's end."""
        if self.pos + n > len(self.buf):
            raise self._short("a GGUF array runs past the end of the file")
        return self.pos + n

    def tensor(self) -> TensorInfo:
        name = self.string()
        n_dims = self.unpack("I")
        if n_dims > 8:  # GGML_MAX_DIMS is 4; a larger count is a damaged table
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(self.unpack("Q") for _ in range(n_dims))
        return TensorInfo(name, shape, self.unpack("I"), self.unpack("Q"))


def read_header(path: Path | str) -> GGUFHeader:
    """Read a GGUF's metadata and tensor table. A file that is not a GGUF, or whose header is
    damaged or cut short, is a ValueError; an unreadable one an OSError."""
    p = Path(path)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = min(size, _FIRST_READ)
        while True:
            f.seek(0)
            buf = f.read(n)
            try:
                return _parse(p, buf, eof=len(buf) < n or n >= size)
            except _NeedMore:
                if n >= _MAX_HEADER:
                    raise ValueError(f"{p.name}: a GGUF header over 64 MiB") from None
                n = min(size, n * 4, _MAX_HEADER)


def _parse(p: Path, buf: bytes, *, eof: bool) -> GGUFHeader:
    if len(buf) < 8 or buf[:4] != _MAGIC:
        raise ValueError(f"{p.name} is not a GGUF file")
    # A big-endian file's version reads as a huge number little-endian (gguf-py's test).
    endian = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"
    c = _Cursor(buf, 4, endian, eof=eof)
    version = c.unpack("I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = c.unpack("Q"), c.unpack("Q")
    if n_kv > _MAX_KV or n_tensors > _MAX_TENSORS:
        raise ValueError(f"a GGUF header claiming {n_kv} keys and {n_tensors} tensors")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        fields[key] = c.value(c.unpack("I"))
    tensors = tuple(c.tensor() for _ in range(n_tensors))
    return GGUFHeader(p, version, fields, tensors, endian)
