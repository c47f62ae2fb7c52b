"""llama.cpp's own `llama-server`, built from the pinned sdist, as a peer for side-by-side runs.

`bench/build_llama_server.sh` builds it (same llama.cpp as edged's llama-cpp-python); this
module finds the binary and runs it. On AMX CPUs the server gets `--no-repack`, the same
setting edged uses there (llama.cpp 0.3.36 crashes with its extra CPU buffers on).

    from llama_server import llama_server_binary, start_llama_server, stop
    proc = start_llama_server(model, port=8090, threads=2, parallel=4, ctx_size=8192)
    ...
    stop(proc)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from daemon.engine.native.llama import cpu_has_amx

BENCH = Path(__file__).resolve().parent
DONE_FILE = Path("/tmp/llama-server.done")


def llama_server_binary(build: bool = False) -> Path:
    """The llama-server path: $EDGED_LLAMA_SERVER, /tmp/llama-server.done, or the build cache.

    With `build=True` a missing binary is built (bench/build_llama_server.sh; minutes).
    """
    env = os.environ.get("EDGED_LLAMA_SERVER")
    if env:
        return Path(env)
    if DONE_FILE.exists():
        path = Path(DONE_FILE.read_text().strip())
        if path.is_file():
            return path
    script = BENCH / "build_llama_server.sh"
    if build:
        out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
        return Path(out.stdout.strip().splitlines()[-1])
    ver = _pinned_version()
    path = Path.home() / ".cache" / "edged-peer" / ver / "build" / "bin" / "llama-server"
    if not path.is_file():
        raise FileNotFoundError(f"no llama-server at {path}; run {script}")
    return path


def llama_bench_binary() -> Path:
    """llama-bench, built next to llama-server."""
    return llama_server_binary().with_name("llama-bench")


def _pinned_version() -> str:
    for line in (BENCH.parent / "pyproject.toml").read_text().splitlines():
        if "llama-cpp-python==" in line:
            return line.split("==", 1)[1].split('"', 1)[0].strip()
    raise RuntimeError("no llama-cpp-python pin in pyproject.toml")


def start_llama_server(
    model_path: Path | str,
    port: int,
    threads: int = 2,
    parallel: int = 1,
    ctx_size: int = 4096,
    extra_args: list[str] | None = None,
    timeout: float = 300.0,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start llama-server on 127.0.0.1:`port` and return once /health answers 200.

    `ctx_size` is the total context, shared by the `parallel` slots (llama-server's rule).
    Output goes to `log` (or is discarded). Raises RuntimeError if it exits or never answers.
    """
    args = [
        str(llama_server_binary()),
        *("--model", str(model_path), "--host", "127.0.0.1", "--port", str(port)),
        *("--threads", str(threads), "--threads-batch", str(threads)),
        *("--parallel", str(parallel), "--ctx-size", str(ctx_size)),
    ]
    if cpu_has_amx():
        args.append("--no-repack")
    args += extra_args or []
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}: {' '.join(args)}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"llama-server did not answer {url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Terminate the server, killing it if it does not exit within `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
