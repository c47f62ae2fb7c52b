"""Fixtures: a tiny random-weight cross-encoder, converted; a daemon serving it and MiniLM."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quantize.convert import convert
from tests.conftest import Server, place_copy, start_server, stop_server
from tests.quantize.cross_encoder import tiny_cross_encoder


@pytest.fixture(scope="session")
def ranker_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight BertForSequenceClassification with MiniLM's tokenizer."""
    return tiny_cross_encoder(tmp_path_factory.mktemp("ranker") / "hf", minilm_dir, seed=3)


@pytest.fixture(scope="session")
def rerank_models_dir(
    ranker_dir: Path,
    minilm_gguf: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """ranker-f32.gguf, ranker-f16.gguf and a plain embedding model, minilm-f16.gguf."""
    out = tmp_path_factory.mktemp("rerank_models")
    for t in ("f32", "f16"):
        convert(ranker_dir, out / f"ranker-{t}.gguf", t, progress=False)
    place_copy(minilm_gguf("f16"), out / "minilm-f16.gguf")
    return out


@pytest.fixture(scope="session")
def rerank_server(
    rerank_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A daemon with the default (generation) model plus the rerank models, 4 pairs a decode."""
    srv = start_server(
        tmp_path_factory.mktemp("rerank_server"),
        "--models-dir",
        str(rerank_models_dir),
        "--parallel",
        "4",
        "--threads",
        "2",
    )
    yield srv
    stop_server(srv)
