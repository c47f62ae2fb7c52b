"""The `edged` command line as a person uses it: pull from a hub stand-in, list, show, rm,
ps, and `run` in a pseudo-terminal, with a daemon and without one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from daemon.config import embedded_model_path
from tests.conftest import ROOT, Server, free_port
from tests.quantize.hub import FakeHub, serve

DEFAULT = embedded_model_path().stem


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGED_", "HF_"))}
    env.update(extra)
    return env


def edged(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env=env or _env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    with serve() as h:
        yield h


def test_pull_list_show_rm(hub: FakeHub, tmp_path: Path, models_dir: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(embedded_model_path(), repo / "tiny-chat.Q4_1.gguf")
    hub.add("someone/Tiny-Chat-GGUF", repo)
    env = _env(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf"),
        EDGED_MODELS_DIR=str(models_dir),
        EDGED_URL=f"http://127.0.0.1:{free_port()}",
    )

    r = edged("pull", "someone/Tiny-Chat-GGUF:Q4_1", env=env)
    assert r.returncode == 0, r.stderr
    assert "pulled Tiny-Chat.Q4_1" in r.stdout
    pulled = models_dir / "Tiny-Chat.Q4_1.gguf"
    assert pulled.read_bytes() == embedded_model_path().read_bytes()
    # Again: nothing left to download, the same file.
    downloads = len([q for q in hub.requests if q.startswith("GET") and "/resolve/" in q])
    assert edged("pull", "someone/Tiny-Chat-GGUF:Q4_1", env=env).returncode == 0
    assert len([q for q in hub.requests if q.startswith("GET") and "/resolve/" in q]) == downloads

    missing = edged("pull", "someone/Tiny-Chat-GGUF:Q8_0", env=env)
    assert missing.returncode == 1 and "no Q8_0 GGUF" in missing.stderr

    listing = edged("list", env=env).stdout.splitlines()
    assert listing[0].split() == ["NAME", "SIZE", "ARCH", "QUANT", "CONTEXT", "MODIFIED"]
    row = next(line for line in listing if line.startswith("Tiny-Chat.Q4_1 "))
    assert "llama" in row and "Q4_1" in row and "8192" in row and "MB" in row
    assert any("(embedded default)" in line for line in listing)

    show = edged("show", "Tiny-Chat.Q4_1", env=env)
    assert show.returncode == 0, show.stderr
    for section in ("Model", "Pulled from", "Parameters", "License", "Template"):
        assert f"  {section}" in show.stdout
    assert "someone/Tiny-Chat-GGUF" in show.stdout
    assert "general.license" not in show.stdout and "apache-2.0" in show.stdout.lower()
    template = edged("show", "--template", "Tiny-Chat.Q4_1", env=env).stdout
    assert "<|im_start|>" in template
    assert edged("show", "nope", env=env).returncode == 1

    rm = edged("rm", "Tiny-Chat.Q4_1", env=env)
    assert rm.returncode == 0 and "deleted" in rm.stdout
    assert list(models_dir.iterdir()) == []
    gone = edged("rm", DEFAULT, env=env)
    assert gone.returncode == 1 and "embedded" in gone.stderr


def test_version() -> None:
    from importlib.metadata import version

    r = edged("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == (
        f"edged {version('edged')} (llama-cpp-python {version('llama-cpp-python')})"
    )


def test_ps_without_a_daemon_says_so() -> None:
    r = edged("ps", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "no daemon answers" in r.stderr and "edged serve" in r.stderr


def test_ps_shows_the_loaded_model(fresh: Server) -> None:
    r = edged("ps", "--url", fresh.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SLOTS", "MEMORY", "GPU", "CONTEXT", "UNTIL"]
    assert lines[1].startswith(DEFAULT) and "/4 busy" in lines[1] and "MB" in lines[1]
    assert " cpu " in lines[1]  # n_gpu_layers auto on this CPU build: no layer offloaded


def test_run_one_shot_with_prompt_and_stdin(fresh: Server) -> None:
    r = edged("run", DEFAULT, "Say hello.", "--max-tokens", "8", "--url", fresh.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    piped = edged(
        "run",
        DEFAULT,
        "--max-tokens",
        "8",
        "--keep-alive",
        "5m",
        "--url",
        fresh.url,
        stdin="Write one word.\n",
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip()


def test_run_unknown_model_is_refused_clearly(fresh: Server) -> None:
    r = edged("run", "no-such-model", "hi", "--url", fresh.url)
    assert r.returncode == 1 and "does not serve 'no-such-model'" in r.stderr


def _spawn(*args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "daemon", *args],
        cwd=str(ROOT),
        env=_env(TERM="dumb"),
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 120),
    )
    return child


def test_run_interactive_in_a_terminal(fresh: Server) -> None:
    child = _spawn("run", DEFAULT, "--url", fresh.url, "--max-tokens", "12", "--temperature", "0")
    try:
        child.expect("Chatting with")
        child.expect(">>> ")
        child.sendline("/set temperature 0.2")
        child.expect("Set parameter 'temperature' to '0.2'")
        child.expect(">>> ")
        child.sendline("/set top_p nope")
        child.expect("top_p wants a float")
        child.expect(">>> ")
        child.sendline("What is the capital of France?")
        child.expect(r"\S+.*\r\n>>> ")  # a streamed answer, then the prompt again
        child.sendline('"""Line one')
        child.expect(r"\.\.\. ")
        child.sendline('line two"""')
        child.expect(r"\S+.*\r\n>>> ")
        child.sendline("/clear")
        child.expect("Cleared session context")
        child.expect(">>> ")
        child.sendline("/nonsense")
        child.expect("Unknown command")
        child.expect(">>> ")
        child.sendline("/bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_run_interactive_without_a_daemon() -> None:
    child = _spawn("run", DEFAULT, "--url", f"http://127.0.0.1:{free_port()}")
    child.expect("no daemon answers at")
    child.expect("edged serve")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


def test_pull_split_gguf_lists_and_removes_as_one(
    hub: FakeHub, tmp_path: Path, models_dir: Path
) -> None:
    repo = tmp_path / "split"
    (repo / "Q4_K_M").mkdir(parents=True)
    parts = [repo / "Q4_K_M" / f"Big-Q4_K_M-{k:05d}-of-00002.gguf" for k in (1, 2)]
    for k, p in enumerate(parts):
        p.write_bytes(b"GGUF" + bytes([k]) * 64)  # bytes only: pull copies, it does not load
    (repo / "Big-Q8_0.gguf").write_bytes(b"GGUF")
    hub.add("someone/Big-GGUF", repo)
    env = _env(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf"),
        EDGED_MODELS_DIR=str(models_dir),
        EDGED_URL=f"http://127.0.0.1:{free_port()}",
    )
    r = edged("pull", "someone/Big-GGUF", env=env)  # no tag: Q4_K_M
    assert r.returncode == 0, r.stderr
    got = sorted(p.name for p in models_dir.glob("*.gguf"))
    assert got == ["Big.Q4_K_M-00001-of-00002.gguf", "Big.Q4_K_M-00002-of-00002.gguf"]
    assert (models_dir / got[1]).read_bytes() == parts[1].read_bytes()
    rows = [line for line in edged("list", env=env).stdout.splitlines() if line.startswith("Big")]
    assert len(rows) == 1 and rows[0].split()[0] == "Big.Q4_K_M"
    assert edged("rm", "Big.Q4_K_M", env=env).returncode == 0
    assert list(models_dir.iterdir()) == []
