"""A vision model made in the test: the embedded SmolLM2 as the language model and a tiny
random SmolVLM (Idefics3) projector converted by quantize/mmproj.py; a model that hears: the
same language model with a tiny random Ultravox audio projector (tests/media/tiny_audio.py);
and one that places images by M-RoPE: SmolLM2 as a qwen2vl model with a tiny random Qwen2-VL
projector (tests/media/tiny_qwen2vl.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from daemon.engine.native.llama import Model
from daemon.engine.native.mtmd import Projector, ProjectorOptions
from quantize.mmproj import convert_mmproj
from tests.conftest import Server, gguf_reader, start_server, stop_server
from tests.media.image_host import PNG, serve_images
from tests.media.tiny_audio import write_mmproj as write_audio_mmproj
from tests.media.tiny_qwen2vl import write_lm as write_qwen_lm
from tests.media.tiny_qwen2vl import write_mmproj as write_qwen_mmproj
from tests.media.tiny_vlm import write_checkpoint

# libmtmd frames an Idefics3 image with "<fake_token_around_image>" and "<global-img>", which
# it looks up as single tokens of the text model (SmolVLM's LM is SmolLM2 plus such tokens).
# SmolLM2 lacks them, so the test's LM renames two control tokens it never emits in chat.
IMAGE_TOKENS = {11: "<fake_token_around_image>", 12: "<global-img>"}  # <jupyter_start>, _text


def with_tokens(src: Path, out: Path, renames: dict[int, str]) -> Path:
    """A copy of a GGUF whose vocabulary has tokens renamed (ids, types and weights kept)."""
    reader = gguf_reader(src)
    field = reader.get_field(gguf.Keys.Tokenizer.LIST)
    assert field is not None
    tokens = list(field.contents())
    for token_id, text in renames.items():
        tokens[token_id] = text
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(out, arch.contents(), endianess=reader.endianess)
    details = MetadataDetails(gguf.GGUFValueType.ARRAY, tokens, sub_type=gguf.GGUFValueType.STRING)
    copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.LIST: details}, [])
    return out


@pytest.fixture(scope="session")
def vlm_lm_path(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 with SmolVLM's two image-framing tokens."""
    return with_tokens(smollm_gguf, tmp_path_factory.mktemp("vlm_lm") / "lm.gguf", IMAGE_TOKENS)


@pytest.fixture(scope="session")
def text_hidden(smollm_gguf: Path) -> int:
    """SmolLM2's embedding width: the projector's projection_dim."""
    field = gguf_reader(smollm_gguf).get_field("llama.embedding_length")
    assert field is not None
    return int(field.contents())


@pytest.fixture(scope="session")
def vlm_dir(text_hidden: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SmolVLM checkpoint (Hugging Face layout)."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny_smolvlm"), text_hidden)


@pytest.fixture(scope="session")
def mmproj(vlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint's projector converted to F32 and F16 mmproj GGUFs."""
    out = tmp_path_factory.mktemp("mmproj")
    return {
        t: convert_mmproj(vlm_dir, out / f"mmproj.{t}.gguf", t, progress=False)
        for t in ("f32", "f16")
    }


@pytest.fixture(scope="session")
def vlm_lm(vlm_lm_path: Path) -> Iterator[Model]:
    """The language model, loaded once."""
    model = Model(vlm_lm_path)
    yield model
    model.close()


# Flash attention off: on CPU it casts K and V to F16, and the reference tests are exact.
OPTIONS = ProjectorOptions(n_threads=1, flash_attn=False)


@pytest.fixture(scope="session")
def projector(vlm_lm: Model, mmproj: dict[str, Path]) -> Iterator[Projector]:
    """The F32 projector against the language model."""
    with Projector(vlm_lm, mmproj["f32"], OPTIONS) as p:
        yield p


# The HTTP tests' daemon: bit-exact (--exact), one thread, two slots, a context and batch
# the in-process references copy.
CTX, PARALLEL, N_BATCH = 512, 2, 512
ARGS = (
    "--exact",
    "--threads",
    "1",
    "--ctx-size",
    str(CTX),
    "--parallel",
    str(PARALLEL),
    "--batch-size",
    str(N_BATCH),
)


@pytest.fixture(scope="session")
def vlm_server(
    vlm_lm_path: Path, mmproj: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A daemon serving the tiny VLM (its F32 projector through --mmproj)."""
    srv = start_vlm(tmp_path_factory.mktemp("vlm_http"), vlm_lm_path, mmproj["f32"])
    yield srv
    stop_server(srv)


def start_vlm(tmp: Path, lm_path: Path, mmproj: Path, *extra: str) -> Server:
    """`edged serve` of a language model and its projector under the media tests' ARGS."""
    return start_server(tmp, "--model", str(lm_path), "--mmproj", str(mmproj), *ARGS, *extra)


@pytest.fixture(scope="session")
def text_server(vlm_lm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same language model without a projector."""
    srv = start_server(tmp_path_factory.mktemp("text_http"), "--model", str(vlm_lm_path), *ARGS)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def images_host() -> Iterator[str]:
    """host:port of a local HTTP server with test images (tests/media/image_host.py)."""
    with serve_images() as host:
        yield host


@pytest.fixture(scope="session")
def keyed_vlm(
    vlm_lm_path: Path,
    mmproj: dict[str, Path],
    images_host: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The tiny VLM behind API keys (each test module uses its own keys, so no module finds
    another's KV), reading images under a media folder (cat.png) and from `images_host`."""
    tmp = tmp_path_factory.mktemp("vlm_keyed")
    (tmp / "media").mkdir()
    (tmp / "media" / "cat.png").write_bytes(PNG)
    srv = start_server(
        tmp,
        "--model",
        str(vlm_lm_path),
        "--mmproj",
        str(mmproj["f32"]),
        *ARGS,
        "--media-dir",
        str(tmp / "media"),
        "--allow-remote-media",
        images_host,
        env={"EDGED_API_KEYS": "alpha,beta,gamma,delta,epsilon"},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def audio_mmproj(text_hidden: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Ultravox audio projector (F32, convolutions F16)."""
    return write_audio_mmproj(tmp_path_factory.mktemp("audio_mmproj") / "mmproj.gguf", text_hidden)


@pytest.fixture(scope="session")
def audio_projector(vlm_lm: Model, audio_mmproj: Path) -> Iterator[Projector]:
    """The audio projector against the language model, in process."""
    with Projector(vlm_lm, audio_mmproj, OPTIONS) as p:
        yield p


@pytest.fixture(scope="session")
def audio_server(
    vlm_lm_path: Path, audio_mmproj: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A daemon serving the language model with the audio projector (--mmproj), behind API
    keys (each test module uses its own, so no module finds another's KV), taking at most
    5 s of audio a request (so that the limit's tests send small files)."""
    srv = start_server(
        tmp_path_factory.mktemp("audio_http"),
        "--model",
        str(vlm_lm_path),
        "--mmproj",
        str(audio_mmproj),
        *ARGS,
        "--max-audio-seconds",
        "5",
        env={"EDGED_API_KEYS": "hear1,hear2,hear3,hear4"},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def qwen_lm_path(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a qwen2vl (M-RoPE) language model."""
    return write_qwen_lm(smollm_gguf, tmp_path_factory.mktemp("qwen_lm") / "qwen.gguf")


@pytest.fixture(scope="session")
def qwen_mmproj(text_hidden: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Qwen2-VL projector (F32)."""
    return write_qwen_mmproj(tmp_path_factory.mktemp("qwen_mmproj") / "mmproj.gguf", text_hidden)


@pytest.fixture(scope="session")
def qwen_server(
    qwen_lm_path: Path, qwen_mmproj: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A daemon serving the M-RoPE model, behind API keys (each test its own, so that no test
    finds another's KV), each key reusing at most 40 leading tokens of another's: a cut that
    falls inside the first image of the tests' prompts."""
    srv = start_server(
        tmp_path_factory.mktemp("qwen_http"),
        "--model",
        str(qwen_lm_path),
        "--mmproj",
        str(qwen_mmproj),
        *ARGS,
        "--cache-share-tokens",
        "40",
        env={"EDGED_API_KEYS": ",".join(f"q{i}" for i in range(10))},
    )
    yield srv
    stop_server(srv)
