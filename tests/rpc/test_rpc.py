"""One model over two RPC workers on loopback: same greedy output as local, and a worker lost
mid-stream ends that stream with one error event while the daemon lives on and recovers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Server, stop_server
from tests.rpc.conftest import clean_env, start_daemon, start_worker
from tests.service.conftest import COUNTING, health, sse_events

ARGS = ("--threads", "1", "--ctx-size", "256", "--parallel", "2")
PROMPTS = [COUNTING, "The capital of France is", "def fibonacci(n):"]


def _generate(url: str, prompt: str, rid: str, n: int = 16) -> str:
    r = httpx.post(
        f"{url}/api/generate",
        json={
            "request_id": rid,
            "prompt": prompt,
            "stream_response": False,
            "generation_config": {"do_sample": False, "max_new_tokens": n},
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.text


@dataclass
class Split:
    workers: list[tuple[subprocess.Popen[bytes], int]]
    daemon: Server
    local: dict[str, str]
    tmp: Path
    python: Path


@pytest.fixture(scope="module")
def split(rpc_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = tmp_path_factory.mktemp("rpc")
    local_daemon = start_daemon(rpc_python, tmp, *ARGS)
    try:
        local = {p: _generate(local_daemon.url, p, f"local-{i}") for i, p in enumerate(PROMPTS)}
    finally:
        stop_server(local_daemon)
    workers = [start_worker(rpc_python, tmp), start_worker(rpc_python, tmp)]
    spec = ",".join(f"127.0.0.1:{port}" for _, port in workers)
    daemon = start_daemon(rpc_python, tmp, *ARGS, "--rpc", spec)
    yield Split(workers, daemon, local, tmp, rpc_python)
    stop_server(daemon)
    for proc, _ in workers:
        proc.terminate()
        proc.wait(30)


def test_refuses_a_remote_bind_without_allow_remote() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "rpc-worker", "--host", "0.0.0.0"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication" in lines[0] and "--allow-remote" in lines[0]


def test_a_build_without_rpc_explains_in_one_line() -> None:
    from daemon.engine.native.ggml_rpc import rpc_available

    if rpc_available():
        pytest.skip("this venv's llama-cpp-python has RPC")
    for argv in (["rpc-worker"], ["serve", "--rpc", "127.0.0.1:50052"]):
        r = subprocess.run(
            [sys.executable, "-m", "daemon", *argv],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "-DGGML_RPC=on" in lines[0], r.stderr


def test_split_over_two_workers_equals_local(split: Split) -> None:
    for i, prompt in enumerate(PROMPTS):
        assert _generate(split.daemon.url, prompt, f"split-{i}") == split.local[prompt]
    body = health(split.daemon.url)
    assert body["status"] == "ok"
    workers = body["rpc_workers"]
    assert [w["endpoint"] for w in workers] == [f"127.0.0.1:{p}" for _, p in split.workers]
    assert all(w["status"] == "up" and w["memory_total"] > 0 for w in workers), workers
    metrics = httpx.get(f"{split.daemon.url}/metrics", timeout=30).text
    for _, port in split.workers:
        assert f'edged_rpc_worker_up{{endpoint="127.0.0.1:{port}"}} 1.0' in metrics


def _stream(url: str, prompt: str, n: int) -> Iterator[Any]:
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json={
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": n,
            "temperature": 0,
            "stream": True,
        },
        timeout=120,
    ) as r:
        assert r.status_code == 200
        yield from sse_events(r)


def _wait(cond: Any, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_worker_lost_mid_stream_then_back(split: Split) -> None:
    url = split.daemon.url
    proc, port = split.workers[1]
    events = _stream(url, "Count from one to two hundred.", 200)
    got = [next(events) for _ in range(3)]  # generating now
    assert all("choices" in e for e in got)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    rest = list(events)
    errors = [e for e in rest if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and rest[-1] is errors[0], rest[-3:]
    assert "RPC worker" in errors[0]["error"]["message"]
    # The daemon lives on, says which worker is down, and refuses work cleanly meanwhile.
    assert split.daemon.proc.poll() is None
    _wait(
        lambda: any(w["status"] == "down" for w in health(url)["rpc_workers"]),
        "the lost worker is reported down",
    )
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 503
    down = [w for w in r.json()["rpc_workers"] if w["status"] == "down"]
    assert [w["endpoint"] for w in down] == [f"127.0.0.1:{port}"]
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    assert f'edged_rpc_worker_up{{endpoint="127.0.0.1:{port}"}} 0.0' in metrics
    r = httpx.post(f"{url}/api/generate", json={"request_id": "x", "prompt": "hi"}, timeout=60)
    assert r.status_code == 503 and "RPC worker" in r.text
    # The worker returns on the same port: the daemon reloads the model and serves again.
    split.workers[1] = start_worker(split.python, split.tmp, port)
    _wait(lambda: httpx.get(f"{url}/health", timeout=30).status_code == 200, "serving again")
    for i, prompt in enumerate(PROMPTS):
        assert _generate(url, prompt, f"again-{i}") == split.local[prompt]
    assert split.daemon.proc.poll() is None


def test_ggml_libraries_are_the_copies_libllama_uses() -> None:
    """A wheel holds libggml-base.so, .so.0 and .so.0.x as separate files; opening another
    one than libllama's gives a second copy whose abort callback nobody calls (the daemon
    then died on a lost worker). One file of each library must be mapped."""
    from daemon.engine.native import ggml_rpc

    ggml_rpc._ggml()
    ggml_rpc._registry()
    ggml_rpc.rpc_available()
    maps = Path("/proc/self/maps").read_text().splitlines()
    files = {line.split()[-1] for line in maps if "/llama_cpp/lib/lib" in line}
    for stem in ("libggml-base.so", "libggml.so", "libggml-rpc.so"):
        copies = {f for f in files if Path(f).name.startswith(stem)}
        assert len(copies) <= 1, copies
