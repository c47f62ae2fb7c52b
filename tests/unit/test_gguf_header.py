"""The daemon's GGUF header reader against gguf-py's: the same keys, values and tensor table
on the embedded model and on files written with every value type in both byte orders; a
damaged or cut file is a ValueError (the callers' one "unreadable" case), never another
exception, a hang or a read past the end."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import embedded_model_path
from quantize.gguf_header import ArrayRef, GGUFHeader, read_header

VALUES: dict[str, Any] = {
    "t.u8": (7, gguf.GGUFValueType.UINT8),
    "t.i8": (-7, gguf.GGUFValueType.INT8),
    "t.u16": (65535, gguf.GGUFValueType.UINT16),
    "t.i16": (-300, gguf.GGUFValueType.INT16),
    "t.u32": (4_000_000_000, gguf.GGUFValueType.UINT32),
    "t.i32": (-2_000_000_000, gguf.GGUFValueType.INT32),
    "t.f32": (0.5, gguf.GGUFValueType.FLOAT32),
    "t.bool": (True, gguf.GGUFValueType.BOOL),
    "t.str": ("ünïcödé {{ template }}", gguf.GGUFValueType.STRING),
    "t.u64": (2**63 + 5, gguf.GGUFValueType.UINT64),
    "t.i64": (-(2**62), gguf.GGUFValueType.INT64),
    "t.f64": (1e-300, gguf.GGUFValueType.FLOAT64),
    "t.ints": ([1, -2, 3], gguf.GGUFValueType.ARRAY),
    "t.floats": ([0.25, -1.5], gguf.GGUFValueType.ARRAY),
    "t.strs": (["a", "", "ß" * 40], gguf.GGUFValueType.ARRAY),
}


def write(path: Path, endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE) -> Path:
    w = gguf.GGUFWriter(path, "llama", endianess=endian)
    for key, (value, vtype) in VALUES.items():
        w.add_key_value(key, value, vtype)
    w.add_tensor("blk.0.w", np.arange(48, dtype=np.float32).reshape(3, 16))
    w.add_tensor("blk.0.h", np.ones((2, 4, 8), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def values(h: GGUFHeader) -> dict[str, Any]:
    return {k: h.array(k) if isinstance(v, ArrayRef) else v for k, v in h.fields.items()}


def same_as_gguf_py(path: Path) -> GGUFHeader:
    """Read `path` with both readers and compare every key and tensor row."""
    h = read_header(path)
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert values(h) == theirs
    assert [(t.name, t.n_elements, t.n_bytes) for t in h.tensors] == [
        (t.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors
    ]
    assert [t.offset for t in h.tensors] == [
        int(t.data_offset) - reader.data_offset for t in reader.tensors
    ]
    assert [t.shape for t in h.tensors] == [tuple(int(d) for d in t.shape) for t in reader.tensors]
    return h


def test_the_embedded_model_reads_as_gguf_py_reads_it() -> None:
    h = same_as_gguf_py(embedded_model_path())
    assert h.get("general.architecture") == "llama"
    assert h.length("tokenizer.ggml.tokens") == 49152
    assert h.get("tokenizer.ggml.tokens") is None  # an array is not a scalar
    assert h.array("general.architecture") is None and h.array("nope") is None


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_every_value_type_in_both_byte_orders(tmp_path: Path, endian: gguf.GGUFEndian) -> None:
    h = same_as_gguf_py(write(tmp_path / "t.gguf", endian))
    assert h.endian == ("<" if endian == gguf.GGUFEndian.LITTLE else ">")
    got = values(h)
    for key, (value, _) in VALUES.items():
        assert got[key] == pytest.approx(value) if isinstance(value, float) else value, key
    assert [t.shape for t in h.tensors] == [(16, 3), (8, 4, 2), (64,)]
    assert [t.n_bytes for t in h.tensors] == [192, 128, 256]


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def test_nested_and_empty_arrays_read_back(tmp_path: Path) -> None:
    """gguf-py writes neither (its writer refuses an empty array): made byte by byte."""
    t = gguf.GGUFValueType
    nested = struct.pack("<IQ", t.ARRAY, 3) + b"".join(
        struct.pack("<IQ", t.INT32, len(xs)) + struct.pack(f"<{len(xs)}i", *xs)
        for xs in ([1, 2], [3], [])
    )
    after = struct.pack("<Q", 10) + b"still read"
    kvs = [
        _kv("t.nested", t.ARRAY, nested),
        _kv("t.empty", t.ARRAY, struct.pack("<IQ", t.STRING, 0)),
        _kv("t.after", t.STRING, after),
    ]
    path = tmp_path / "nested.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    h = read_header(path)
    assert h.array("t.nested") == [[1, 2], [3], []]
    assert h.array("t.empty") == [] and h.length("t.empty") == 0
    assert h.get("t.after") == "still read"
    assert h.tensors == ()


def test_what_is_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "text.gguf").write_bytes(b"not a model at all")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    # A header claiming 2**40 one-byte keys would hold the reader for minutes and fill its
    # memory long before the file ended: refused from the counts.
    many = struct.pack("<IQQ", 3, 0, 1 << 40) + _kv("k", gguf.GGUFValueType.UINT8, b"1") * 1000
    (tmp_path / "many.gguf").write_bytes(b"GGUF" + many)
    for name in ("empty.gguf", "text.gguf", "v1.gguf", "many.gguf"):
        with pytest.raises(ValueError):
            read_header(tmp_path / name)
    with pytest.raises(OSError):
        read_header(tmp_path / "missing.gguf")
    with pytest.raises(OSError):
        read_header(tmp_path)


def _header_end(path: Path) -> int:
    """Where the tensor table ends (the data's alignment padding follows)."""
    return gguf.GGUFReader(path).data_offset


def test_a_file_cut_anywhere_in_its_header_is_a_value_error(tmp_path: Path) -> None:
    whole = write(tmp_path / "t.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in range(1, _header_end(tmp_path / "t.gguf") - 32):  # the padding is not needed
        cut.write_bytes(whole[:n])
        with pytest.raises(ValueError):
            read_header(cut)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_headers_are_value_errors_or_read(tmp_path_factory, data: st.DataObject) -> None:
    """Bytes of the header overwritten at random (lengths, counts, types, dimensions): the
    reader returns or raises ValueError, within the file's bounds."""
    d = tmp_path_factory.mktemp("fuzz")
    src = d / "t.gguf"
    if not src.exists():
        write(src)
    raw = bytearray(src.read_bytes())
    end = _header_end(src)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(4, end - 1))  # the magic stays: the rest is fair game
        raw[at] = data.draw(st.integers(0, 255))
    bad = d / "bad.gguf"
    bad.write_bytes(bytes(raw))
    try:
        h = read_header(bad)
    except ValueError:
        return
    for key, v in h.fields.items():
        if isinstance(v, ArrayRef):
            with contextlib.suppress(ValueError):
                h.array(key)
    assert all(t.n_bytes >= 0 for t in h.tensors)


REWRITER = """
import sys, threading, time
from pathlib import Path
from quantize.gguf_header import read_header

path, whole = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
stop = time.monotonic() + 3
def rewrite():  # `cp` over the file: truncated in place, then written again
    while time.monotonic() < stop:
        with open(path, "wb") as f:
            f.write(whole[: len(whole) // 3])
            f.flush()
            f.write(whole[len(whole) // 3 :])
        time.sleep(0.05)  # whole for a while: some reads see all of it
threading.Thread(target=rewrite, daemon=True).start()
reads = errors = 0
while time.monotonic() < stop:
    try:
        h = read_header(path)
        h.array("t.vocab")
        reads += 1
    except ValueError:
        errors += 1
print(reads, errors)
"""


def test_a_file_rewritten_in_place_while_it_is_read_is_never_a_crash(tmp_path: Path) -> None:
    """A model file copied over while the daemon reads its header: each read gives the
    header or a ValueError; the process lives (a memory-mapped read of a page the
    truncation removed is a SIGBUS, which no handler catches)."""
    import subprocess
    import sys

    src = tmp_path / "src.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_key_value("t.vocab", [f"token-{i}" for i in range(150_000)], gguf.GGUFValueType.ARRAY)
    w.add_tensor("blk.0.w", np.zeros((256, 256), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    target = tmp_path / "model.gguf"
    target.write_bytes(src.read_bytes())
    run = subprocess.run(
        [sys.executable, "-c", REWRITER, str(target), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    reads, errors = map(int, run.stdout.split())
    assert reads > 0 and errors > 0, (reads, errors)  # both whole and cut files were read
