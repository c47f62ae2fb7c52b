"""Helpers for the beyond-one-machine suite: RPC workers, daemons from a chosen venv, HAProxy.

The RPC tests need llama-cpp-python built with -DGGML_RPC=on. The main venv holds the
registry's build, so they run the daemon and workers from a second venv, `.venv-rpc`
(EDGED_RPC_PYTHON to point elsewhere); .ci/run builds it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server, free_port, wait_healthy

RPC_PYTHON = Path(os.environ.get("EDGED_RPC_PYTHON", ROOT / ".venv-rpc" / "bin" / "python"))
_CHECK = "from daemon.engine.native.ggml_rpc import rpc_available as a; raise SystemExit(not a())"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def rpc_python() -> Path:
    """The python of a venv whose llama-cpp-python has ggml's RPC backend."""
    if not RPC_PYTHON.exists():
        pytest.skip(f"no RPC-enabled venv at {RPC_PYTHON} (.ci/run builds it; README)")
    r = subprocess.run([RPC_PYTHON, "-c", _CHECK], cwd=ROOT, capture_output=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"{RPC_PYTHON}'s llama-cpp-python was built without RPC")
    return RPC_PYTHON


def can_connect(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def start_worker(
    python: Path, tmp: Path, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """`edged rpc-worker` on loopback, one thread; returns once it accepts connections."""
    port = port or free_port()
    log = tmp / f"worker-{port}.log"
    proc = subprocess.Popen(
        [python, "-m", "daemon", "rpc-worker", "--port", str(port), "--threads", "1"],
        cwd=ROOT,
        env=clean_env(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while not can_connect(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, port


def start_daemon(
    python: Path, tmp: Path, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> Server:
    """`python -m daemon serve` from the given venv on a free port."""
    port = free_port()
    log = tmp / f"edged-{port}.log"
    proc = subprocess.Popen(
        [python, "-m", "daemon", "serve", "--port", str(port), *args],
        cwd=tmp,
        env=clean_env(env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    if wait:
        wait_healthy(server, timeout=600)  # generous: CI machines and shared ones are slow
    return server
