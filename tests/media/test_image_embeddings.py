"""libmtmd's embeddings of a test image equal a numpy reference of the same SigLIP encoder,
pixel shuffle and projection; bitmaps, tokenization and their errors through native/mtmd.py.

Tolerances (outputs reach about 3.5). The reference runs in float64. libmtmd's CPU graph is
F32 except in two places, found by rounding the reference stage by stage: the patch
convolution runs in F16 (clip's im2col casts pixels and kernel) and GELU reads ggml's F16
table. With those two emulated, what is left is float32 noise (5e-6 and 7e-7 for two test
images), plus, where a float32 and a float64 pre-activation round to neighbouring F16
values, one table step (1.1e-4 for a third image): bound 5e-4. Against the exact float64
reference the F16 roundings leave 1.3e-3 to 2e-3: bound 5e-3. An F16 projector rounds every
matrix as well (2.8e-3): bound 1e-2; BF16 and Q8_0 projectors likewise, coarser.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from daemon.engine.errors import GenerationFailed, InvalidInput
from daemon.engine.native.llama import Model
from daemon.engine.native.mtmd import ChunkType, Projector, ProjectorOptions
from quantize.mmproj import convert_mmproj
from tests.media.conftest import OPTIONS
from tests.media.tiny_vlm import VISION, image_embeddings, png_bytes, sample_image

TOKENS_PER_TILE = (VISION["image_size"] // VISION["patch_size"] // 2) ** 2  # pixel shuffle 2
EMULATED_TOL, EXACT_TOL, F16_TOL = 5e-4, 5e-3, 1e-2
BF16_TOL, Q8_0_TOL = 5e-2, 0.2  # measured 1.5e-2 and 6.7e-2


def _image_embeddings(projector: Projector, image: np.ndarray) -> list[np.ndarray]:
    """The embeddings of every image chunk libmtmd makes of one image."""
    h, w, _ = image.shape
    with (
        projector.bitmap_rgb(image.tobytes(), w, h) as bitmap,
        projector.tokenize(projector.marker, [bitmap], add_special=False) as chunks,
    ):
        return [projector.encode(c) for c in chunks if c.type == ChunkType.IMAGE]


def test_embeddings_equal_the_numpy_reference(projector: Projector, vlm_dir: Path) -> None:
    image = sample_image()
    tiles = _image_embeddings(projector, image)
    # Idefics3 at image_size: one 1×1 grid tile plus the overview, the same pixels twice.
    assert len(tiles) == 2
    assert np.array_equal(tiles[0], tiles[1])
    got = tiles[0]
    assert got.shape == (TOKENS_PER_TILE, projector.n_embd)

    emulated = image_embeddings(vlm_dir, image, ggml_f16=True)
    exact = image_embeddings(vlm_dir, image)
    assert np.abs(got - emulated).max() < EMULATED_TOL
    assert np.abs(got - exact).max() < EXACT_TOL
    assert np.abs(exact).max() > 1.0  # a real signal, not near-zero outputs passing trivially


@pytest.mark.parametrize(
    ("outtype", "tol"), [("f16", F16_TOL), ("bf16", BF16_TOL), ("q8_0", Q8_0_TOL)]
)
def test_rounded_projectors_stay_close(
    vlm_lm: Model, vlm_dir: Path, tmp_path: Path, outtype: str, tol: float
) -> None:
    path = convert_mmproj(vlm_dir, tmp_path / f"{outtype}.gguf", outtype, progress=False)
    image = sample_image(seed=7)
    with Projector(vlm_lm, path, OPTIONS) as p:
        got = _image_embeddings(p, image)[0]
    assert np.abs(got - image_embeddings(vlm_dir, image)).max() < tol


def test_other_images_differ(projector: Projector, vlm_dir: Path) -> None:
    """A transposed image gives other embeddings, matching the reference's own."""
    image = sample_image(seed=3).transpose(1, 0, 2).copy()
    got = _image_embeddings(projector, image)[0]
    assert np.abs(got - image_embeddings(vlm_dir, image, ggml_f16=True)).max() < EMULATED_TOL
    assert np.abs(got - _image_embeddings(projector, sample_image(seed=3))[0]).max() > 0.1


def test_png_decodes_to_the_same_pixels_and_embeddings(projector: Projector) -> None:
    image = sample_image()
    with projector.bitmap_file_bytes(png_bytes(image)) as bitmap:
        assert (bitmap.width, bitmap.height, bitmap.is_audio) == (32, 32, False)
        assert bitmap.data() == image.tobytes()
        with projector.tokenize(projector.marker, [bitmap], add_special=False) as chunks:
            from_png = [projector.encode(c) for c in chunks if c.type == ChunkType.IMAGE]
    assert np.array_equal(from_png[0], _image_embeddings(projector, image)[0])


def test_chunks_of_a_prompt(projector: Projector, vlm_lm: Model) -> None:
    image = sample_image()
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    with projector.bitmap_rgb(image.tobytes(), 32, 32, media_id=digest) as bitmap:
        assert bitmap.id == digest
        chunks = projector.tokenize(f"Look: {projector.marker} what?", [bitmap], add_special=True)
    with chunks:  # the chunks keep their own copy of the image: the bitmap may go first
        kinds = [c.type for c in chunks]
        assert kinds == [ChunkType.TEXT, ChunkType.IMAGE] * 2 + [ChunkType.TEXT]
        images = [c for c in chunks if c.type == ChunkType.IMAGE]
        assert all(c.id == digest for c in images)
        assert all(c.n_tokens == c.n_pos == TOKENS_PER_TILE for c in images)
        text = [c.text_tokens() for c in chunks]
        assert all(t for t in text[::2])
        # Framing from libmtmd's Idefics3 template: the tile's "<row_1_col_1>", then the
        # overview's "\n\n<fake_token_around_image><global-img>" and a closing token.
        assert "<fake_token_around_image>" in vlm_lm.detokenize(text[0], special=True)
        assert vlm_lm.detokenize(text[2], special=True) == (
            "\n\n<fake_token_around_image><global-img>"
        )
        assert chunks.n_tokens == sum(c.n_tokens for c in chunks)
        assert chunks.n_pos == chunks.n_tokens
    with pytest.raises(RuntimeError, match="closed"):
        images[0].text_tokens()


def test_prompt_ending_in_an_image_and_text_after(projector: Projector, vlm_lm: Model) -> None:
    with (
        projector.bitmap_rgb(sample_image().tobytes(), 32, 32) as bitmap,
        projector.tokenize(f"{projector.marker} is", [bitmap], add_special=False) as chunks,
    ):
        assert chunks[-1].type == ChunkType.TEXT
        assert vlm_lm.detokenize(chunks[-1].text_tokens(), special=True).endswith(" is")


def test_bad_media_is_the_callers_error(projector: Projector) -> None:
    with pytest.raises(InvalidInput):
        projector.bitmap_rgb(b"\x00" * 10, 32, 32)
    with pytest.raises(InvalidInput):
        projector.bitmap_rgb(b"", 0, 0)
    with pytest.raises(InvalidInput, match="unsupported media"):
        projector.bitmap_file_bytes(b"not an image at all")
    with pytest.raises(InvalidInput, match="png file cannot be decoded"):
        projector.bitmap_file_bytes(png_bytes(sample_image())[:60])  # truncated
    with pytest.raises(InvalidInput, match="unsupported media"):
        projector.bitmap_file_bytes(b"")
    with pytest.raises(InvalidInput, match="does not take audio"):
        projector.bitmap_file_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(InvalidInput, match="audio"):
        projector.bitmap_audio(np.zeros(16000, np.float32))
    with projector.bitmap_rgb(sample_image().tobytes(), 32, 32) as bitmap:
        with pytest.raises(InvalidInput, match="2 media markers for 1 media"):
            projector.tokenize(projector.marker * 2, [bitmap], add_special=False)
        with pytest.raises(InvalidInput, match="0 media markers for 1 media"):
            projector.tokenize("no marker", [bitmap], add_special=False)


def test_a_language_model_without_the_framing_tokens(
    smollm_gguf: Path, mmproj: dict[str, Path]
) -> None:
    """The plain SmolLM2 loads the projector (same width) but cannot frame its images:
    libmtmd would hand llama_decode -1 token ids, so tokenize refuses the pairing."""
    model = Model(smollm_gguf)
    try:
        with (
            Projector(model, mmproj["f32"], OPTIONS) as p,
            p.bitmap_rgb(sample_image().tobytes(), 32, 32) as bitmap,
            pytest.raises(GenerationFailed, match="lacks tokens"),
        ):
            p.tokenize(p.marker, [bitmap], add_special=False)
    finally:
        model.close()


def test_undecodable_bytes_never_reach_ffprobe(
    projector: Projector,
    vlm_lm: Model,
    mmproj: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libmtmd's helper tries bytes stb cannot decode as video, by running ffprobe from
    PATH on them; the projector's default points it at a directory that cannot exist. A
    fake ffprobe first in PATH proves nothing was run."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "ran"
    bin_dir.mkdir()
    fake = bin_dir / "ffprobe"
    fake.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    junk = png_bytes(sample_image())[:60]  # a PNG header stb cannot decode past
    with pytest.raises(InvalidInput, match="cannot be decoded"):
        projector.bitmap_file_bytes(junk)
    assert not ran.exists()
    # The control: with video on, the same bytes do start the PATH's ffprobe.
    video = ProjectorOptions(n_threads=1, flash_attn=False, warmup=False, video=True)
    with Projector(vlm_lm, mmproj["f32"], video) as p, pytest.raises(InvalidInput):
        p.bitmap_file_bytes(junk)
    assert ran.exists()
