"""Fixtures of the embedding tests: MiniLM converted to GGUF, and a daemon serving it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, place_copy, start_server, stop_server
from tests.quantize.llm import load, tokenize

OUTTYPES = ("f16", "q8_0")


@pytest.fixture(scope="session")
def embed_models_dir(
    minilm_gguf: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A models directory holding MiniLM as minilm-f16.gguf and minilm-q8_0.gguf."""
    out = tmp_path_factory.mktemp("embed_models")
    for t in OUTTYPES:
        place_copy(minilm_gguf(t), out / f"minilm-{t}.gguf")
    return out


@pytest.fixture(scope="session")
def minilm_ids(embed_models_dir: Path) -> Iterator[Callable[[str], list[int]]]:
    """Token ids of text as llama.cpp's own tokenizer gives them ([CLS] ... [SEP])."""
    with load(embed_models_dir / "minilm-f16.gguf", n_ctx=64) as (model, _ctx):
        yield lambda text: tokenize(model, text, add_special=True)


@pytest.fixture(scope="session")
def embed_server(
    embed_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A daemon with the default model plus the MiniLM files, 4 sequences per decode."""
    srv = start_server(
        tmp_path_factory.mktemp("embed_server"),
        "--models-dir",
        str(embed_models_dir),
        "--strict-model-names",  # test_errors checks the 404 of an unknown name
        "--parallel",
        "4",
        "--threads",
        "2",
    )
    yield srv
    stop_server(srv)
