"""systemd: the unit files verify, and the daemon speaks sd_notify over a real socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from daemon.engine.decode.worker import ContextWorker
from daemon.service import sdnotify
from daemon.service.runner import schedulers_healthy
from tests.conftest import ROOT, start_server, stop_server
from tests.service.conftest import SMALL

UNITS = ROOT / "systemd"


@pytest.mark.parametrize(
    ("unit", "user"),
    [("edged.service", False), ("edged-user.service", True), ("edged@.service", False)],
)
def test_unit_verifies(tmp_path: Path, unit: str, user: bool) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs it)")
    # verify checks that ExecStart exists: point it at this venv's console script.
    edged = Path(sys.executable).parent / "edged"
    text = (UNITS / unit).read_text()
    lines = [
        f"ExecStart={edged} serve" if s.startswith("ExecStart=") else s for s in text.split("\n")
    ]
    copy = tmp_path / unit
    copy.write_text("\n".join(lines))
    env = dict(os.environ)
    cmd = [tool, "verify", str(copy)]
    if user:
        (tmp_path / "run").mkdir()
        env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
        cmd.insert(1, "--user")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    # Unknown or misspelt keys are only warnings: any output at all is a failure.
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stderr


def test_env_example_names_real_settings() -> None:
    from daemon.config import Settings

    fields = set(Settings.model_fields)
    for line in (UNITS / "edged.env.example").read_text().splitlines():
        line = line.lstrip("#").strip()
        if line.startswith("EDGED_") and "=" in line:
            name = line.split("=", 1)[0].removeprefix("EDGED_").lower()
            assert name in fields, name


def _listen(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(0.5)
    return s


def test_notify_filesystem_and_abstract_sockets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for address in (str(tmp_path / "n.sock"), f"@edged-test-{uuid.uuid4().hex}"):
        with _listen(address) as s:
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert sdnotify.notify("READY=1", "STATUS=up")
            assert s.recv(4096) == b"READY=1\nSTATUS=up"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None


def _registry(*schedulers: SimpleNamespace) -> SimpleNamespace:
    models = [SimpleNamespace(worker=s) for s in schedulers]
    return SimpleNamespace(loaded=lambda: models)


def _worker(alive: bool, last_beat: float, decode_started: float | None = None) -> SimpleNamespace:
    """A stand-in worker judged by the real ContextWorker.healthy rule."""
    w = SimpleNamespace(
        _thread=SimpleNamespace(is_alive=lambda: alive),
        last_beat=last_beat,
        decode_started=decode_started,
    )
    w.healthy = lambda now, stale, hung: ContextWorker.healthy(w, now, stale, hung)  # type: ignore[arg-type]
    return w


def test_watchdog_withheld_for_a_hung_or_dead_scheduler() -> None:
    now = 1000.0
    ok = _worker(True, now - 0.5)
    stale = _worker(True, now - 30.0)
    dead = _worker(False, now)
    long_prefill = _worker(True, now - 30.0, decode_started=now - 20.0)
    hung_decode = _worker(True, now - 300.0, decode_started=now - 200.0)
    assert schedulers_healthy(_registry(ok), now, 5.0)  # type: ignore[arg-type]
    assert schedulers_healthy(_registry(), now, 5.0)  # type: ignore[arg-type]
    assert not schedulers_healthy(_registry(ok, stale), now, 5.0)  # type: ignore[arg-type]
    assert not schedulers_healthy(_registry(dead, ok), now, 5.0)  # type: ignore[arg-type]
    # A step in progress is alive until it outlasts the hung bound (the request timeout).
    assert schedulers_healthy(_registry(ok, long_prefill), now, 5.0, 60.0)  # type: ignore[arg-type]
    assert not schedulers_healthy(_registry(hung_decode), now, 5.0, 60.0)  # type: ignore[arg-type]


def _messages(s: socket.socket, until: float) -> list[str]:
    out: list[str] = []
    while time.monotonic() < until:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_ready_watchdog_stopping_from_a_real_daemon(tmp_path: Path) -> None:
    address = f"@edged-test-{uuid.uuid4().hex}"
    with _listen(address) as s:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
        srv = start_server(tmp_path, *SMALL, "--parallel", "1", env=env, wait=False)
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 120
            while not any("READY=1" in m for m in seen):
                assert time.monotonic() < deadline and srv.proc.poll() is None, seen
                seen += _messages(s, time.monotonic() + 0.5)
            assert any(m.startswith("STATUS=loading") for m in seen), seen
            # READY=1 means the default model answers: /health is already 200.
            assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
            pings = [m for m in _messages(s, time.monotonic() + 3.2) if m == "WATCHDOG=1"]
            assert len(pings) >= 4, pings  # every 0.5 s, half of WATCHDOG_USEC
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(60) == 0
            tail = _messages(s, time.monotonic() + 0.5)
            assert any(m.startswith("STOPPING=1") for m in tail), tail
        finally:
            if srv.proc.poll() is None:
                stop_server(srv)
