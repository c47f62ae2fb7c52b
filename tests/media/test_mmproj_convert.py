"""quantize/mmproj.py: the layout llama.cpp's `convert_hf_to_gguf.py --mmproj` writes for
SmolVLM, loadable by libmtmd; and the CLI's `convert --mmproj`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from daemon.engine.errors import LoadFailed
from daemon.engine.native.llama import Model
from daemon.engine.native.mtmd import Projector
from quantize.__main__ import main
from tests.media.conftest import OPTIONS
from tests.media.tiny_vlm import SCALE_FACTOR, VISION, write_checkpoint

Q = gguf.GGMLQuantizationType


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_layout_is_llama_cpps(mmproj: dict[str, Path], text_hidden: int) -> None:
    fields = _fields(mmproj["f16"])
    expected = {
        "general.architecture": "clip",
        "general.type": "mmproj",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "clip.has_vision_encoder": True,
        "clip.projector_type": "idefics3",
        "clip.vision.projection_dim": text_hidden,
        "clip.vision.image_size": VISION["image_size"],
        "clip.vision.patch_size": VISION["patch_size"],
        "clip.vision.embedding_length": VISION["hidden_size"],
        "clip.vision.feed_forward_length": VISION["intermediate_size"],
        "clip.vision.block_count": VISION["num_hidden_layers"],
        "clip.vision.attention.head_count": VISION["num_attention_heads"],
        "clip.vision.image_mean": [0.5, 0.5, 0.5],
        "clip.vision.image_std": [0.5, 0.5, 0.5],
        "clip.vision.projector.scale_factor": SCALE_FACTOR,
        "clip.use_gelu": True,
        "clip.vision.preproc_image_size": VISION["image_size"],
    }
    for key, value in expected.items():
        assert fields[key] == value, key
    assert fields["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)

    tensors = {t.name: t for t in gguf.GGUFReader(mmproj["f16"]).tensors}
    blk = {
        f"v.blk.{i}.{n}.{s}"
        for i in range(VISION["num_hidden_layers"])
        for n in ("ln1", "attn_q", "attn_k", "attn_v", "attn_out", "ln2", "ffn_up", "ffn_down")
        for s in ("weight", "bias")
    }
    top = {f"v.{n}.{s}" for n in ("patch_embd", "post_ln") for s in ("weight", "bias")}
    assert set(tensors) == blk | top | {"v.position_embd.weight", "mm.model.fc.weight"}
    # As llama.cpp's converter: the embeddings stay F32, matrices F16, norms and biases F32.
    assert tensors["v.patch_embd.weight"].tensor_type == Q.F32
    assert tensors["v.position_embd.weight"].tensor_type == Q.F32
    assert tensors["v.blk.0.attn_q.weight"].tensor_type == Q.F16
    assert tensors["mm.model.fc.weight"].tensor_type == Q.F16
    assert tensors["v.blk.1.ln2.bias"].tensor_type == Q.F32
    # ggml order (fastest axis first): a 4×4-input projector to the LM's width.
    assert list(tensors["mm.model.fc.weight"].shape) == [
        VISION["hidden_size"] * SCALE_FACTOR**2,
        int(fields["clip.vision.projection_dim"]),  # type: ignore[call-overload]
    ]


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_output_loads_in_mtmd(vlm_lm: Model, mmproj: dict[str, Path], outtype: str) -> None:
    with Projector(vlm_lm, mmproj[outtype], OPTIONS) as p:
        assert p.vision and not p.audio
        assert p.audio_sample_rate == -1
        assert p.n_embd == vlm_lm.n_embd
        assert p.marker == "<__media__>"
        assert not p.uses_mrope


def test_cli_writes_the_same_file(vlm_dir: Path, mmproj: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    argv = ["-q", "convert", str(vlm_dir), "--mmproj", "-o", str(out), "--outtype", "f32"]
    assert main(argv) == 0
    assert out.read_bytes() == mmproj["f32"].read_bytes()


def test_another_language_models_width_is_refused_at_load(vlm_lm: Model, tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path / "wide", text_hidden=64)
    gguf_path = tmp_path / "wide.gguf"
    assert main(["-q", "convert", str(src), "--mmproj", "-o", str(gguf_path)]) == 0
    with pytest.raises(LoadFailed, match=r"wide\.gguf"):
        Projector(vlm_lm, gguf_path, OPTIONS)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _broken(vlm_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(vlm_dir, tmp_path / "broken"))


def test_text_only_checkpoint(
    vlm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _broken(vlm_dir, tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(config))
    assert main(["-q", "convert", str(src), "--mmproj", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "no vision projector we convert" in _error(capsys)
    assert list(tmp_path.glob("*.gguf*")) == []


def test_missing_preprocessor_config(
    vlm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _broken(vlm_dir, tmp_path)
    (src / "preprocessor_config.json").unlink()
    assert main(["-q", "convert", str(src), "--mmproj", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "preprocessor_config.json" in _error(capsys)


def test_missing_block_tensor(
    vlm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.numpy import load_file, save_file

    src = _broken(vlm_dir, tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    del weights["model.vision_model.encoder.layers.1.mlp.fc2.weight"]
    save_file(weights, str(src / "model.safetensors"))
    assert main(["-q", "convert", str(src), "--mmproj", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "v.blk.1.ffn_down.weight" in _error(capsys)
    assert list(tmp_path.glob("*.gguf*")) == []
