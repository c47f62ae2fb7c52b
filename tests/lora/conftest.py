"""Random adapters for the embedded SmolLM2, converted by edged-quantize, and servers with them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import embedded_model_path
from tests.conftest import Server, start_server, stop_server, wait_healthy

MODEL = embedded_model_path().stem


def lora_server(tmp: Path, adapters: dict[str, Path], *args: str) -> Server:
    """A daemon serving SmolLM2 with adapter `a` (scale 1) and `b` (default scale 0.5)."""
    server = start_server(
        tmp,
        "--strict-model-names",
        "--ctx-size",
        "512",
        "--threads",
        "1",
        "--lora",
        f"a={adapters['a']}",
        "--lora",
        f"b={adapters['b']}:0.5",
        *args,
        wait=False,
    )
    try:
        wait_healthy(server, 600)  # a loaded shared CI machine starts Python slowly
    except BaseException:
        stop_server(server)
        raise
    return server


@pytest.fixture(scope="module")
def server4(
    smollm_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = lora_server(tmp_path_factory.mktemp("lora4"), smollm_adapters, "--parallel", "4")
    yield srv
    stop_server(srv)
