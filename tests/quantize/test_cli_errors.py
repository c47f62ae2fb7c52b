"""The CLI: one-line errors with exit code 2, no half-written outputs, and the happy paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantize.__main__ import main
from quantize.pretokenizers import PRE_TO_JSON, detect_bpe_pre
from quantize.sentencepiece import parse


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unsupported_architecture(
    minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _copy(minilm_dir, tmp_path / "m")
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "o.gguf")]) == 2
    assert "MambaForCausalLM" in _error_line(capsys)
    assert list(tmp_path.glob("*.gguf*")) == []


def test_truncated_safetensors(
    minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _copy(minilm_dir, tmp_path / "m")
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "o.gguf")]) == 2
    assert "model.safetensors" in _error_line(capsys)
    assert list(tmp_path.glob("*.gguf*")) == []


def test_missing_block_tensor(
    minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    src = _copy(minilm_dir, tmp_path / "m")
    with safe_open(str(minilm_dir / "model.safetensors"), framework="numpy") as f:
        names = [k for k in f.keys() if k != "encoder.layer.3.output.dense.weight"]  # noqa: SIM118
        tensors = {k: f.get_tensor(k) for k in names}
    save_file(tensors, str(src / "model.safetensors"))
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "o.gguf")]) == 2
    line = _error_line(capsys)
    assert "block 3" in line and "ffn_down.weight" in line
    assert list(tmp_path.glob("*.gguf*")) == []


def test_failure_mid_write_leaves_nothing(minilm_dir: Path, tmp_path: Path) -> None:
    from quantize.convert import convert
    from quantize.errors import BrokenCheckpoint

    def explode(name: str) -> None:
        if name.startswith("blk.2."):
            raise BrokenCheckpoint("simulated failure")

    target = tmp_path / "out.gguf"
    target.write_bytes(b"previous")
    with pytest.raises(BrokenCheckpoint):
        convert(minilm_dir, target, "f16", progress=False, on_tensor=explode)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_unknown_quant_type(
    minilm_ggufs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "-q",
            "quantize",
            str(minilm_ggufs["f32"]),
            "-o",
            str(tmp_path / "o.gguf"),
            "--type",
            "Q9_X",
        ]
    )
    assert code == 2 and "Q9_X" in _error_line(capsys)


def test_quantize_rejects_non_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a model")
    assert (
        main(["-q", "quantize", str(bogus), "-o", str(tmp_path / "o.gguf"), "--type", "Q4_0"]) == 2
    )
    assert "not a GGUF" in _error_line(capsys)
    assert not (tmp_path / "o.gguf").exists()


def test_cli_quantize_and_inspect_via_python_m(
    minilm_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "minilm.Q4_0.gguf"
    run = [sys.executable, "-m", "quantize", "-q"]
    q = subprocess.run(
        [
            *run,
            "quantize",
            str(minilm_ggufs["f32"]),
            "-o",
            str(out),
            "--type",
            "q4_0",
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert q.returncode == 0, q.stderr
    assert q.stdout.strip() == str(out)
    i = subprocess.run([*run, "inspect", str(out)], capture_output=True, text=True, timeout=60)
    assert i.returncode == 0, i.stderr
    report = dict(line.split(":", 1) for line in i.stdout.splitlines())
    assert report["architecture"].strip() == "bert"
    assert report["file type"].strip() == "Q4_0"
    assert "Q4_0:" in report["tensor types"]
    assert report["context length"].strip() == "512"
    assert report["tokenizer"].strip().startswith("bert")
    assert report["chat template"].strip() == "no"


def test_inspect_shows_chat_template(smollm_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(smollm_gguf)]) == 0
    out = capsys.readouterr().out
    assert "architecture:    llama" in out and "Q4_1: 210" in out and "context length:  8192" in out
    assert "chat template:   yes: {% for message in messages %}" in out


@pytest.mark.parametrize("name", sorted(PRE_TO_JSON))
def test_pretokenizer_table_round_trips(name: str) -> None:
    assert detect_bpe_pre({"pre_tokenizer": PRE_TO_JSON[name]}) == name


def test_sentencepiece_parser_reads_pieces() -> None:
    def field(number: int, wire: int, payload: bytes) -> bytes:
        key = bytes([(number << 3) | wire])
        return key + (bytes([len(payload)]) + payload if wire == 2 else payload)

    def piece(text: str, score: float, kind: int) -> bytes:
        import struct

        body = (
            field(1, 2, text.encode())
            + field(2, 5, struct.pack("<f", score))
            + field(3, 0, bytes([kind]))
        )
        return field(1, 2, body)

    model = piece("<unk>", 0.0, 2) + piece("\u2581the", -1.5, 1) + piece("<0x0A>", 0.0, 6)
    model += field(3, 2, field(3, 0, b"\x00"))  # normalizer_spec.add_dummy_prefix = false
    spm = parse(model)
    assert [(p.text, p.score, p.type) for p in spm.pieces] == [
        ("<unk>", 0.0, 2),
        ("\u2581the", -1.5, 1),
        ("<0x0A>", 0.0, 6),
    ]
    assert spm.add_dummy_prefix is False
