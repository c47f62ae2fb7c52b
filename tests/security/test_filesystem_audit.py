"""What an attacker's requests make the daemon touch on disk, seen from inside the process.

The daemon runs with a `sitecustomize` that installs a Python audit hook (PEP 578) recording
every `open`, `os.listdir`, `os.scandir`, `os.remove`, `os.rename`, `os.mkdir` and
`shutil.rmtree` with its path. An attacker with an inference key, and then an operator with
an admin key, send every path-like name the daemon takes (model, request_id, response id,
adapter, pull source) on every dialect. Then every path the process opened, listed or wrote
while they did must lie in the models folder, the import directory, the Python installation
or the project itself: nothing a request names reaches the file system.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.config import embedded_model_path
from tests.conftest import ROOT, Server, start_server, stop_server
from tests.service.conftest import SMALL

ATTACKER, OPERATOR = "attacker-key", "operator-key"
EVENTS = ("open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir")
HOOK = f"""
import os, sys
_fd = os.open(os.environ["EDGED_AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
_events = {EVENTS!r} + ("shutil.rmtree",)

def _hook(event, args):
    if event in _events and args:
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        try:
            path = os.fsdecode(path)
        except Exception:
            return
        os.write(_fd, (event + "\\t" + os.path.abspath(path).replace("\\n", "?") + "\\n").encode())

sys.addaudithook(_hook)
"""

NAMES = [
    "/etc/passwd",
    "../../../../etc/passwd",
    "~/.ssh/id_rsa",
    "~root/.bashrc",
    "/tmp",
    "..",
    "decoy",
    "x\x00y",
    "*.gguf",
    "[a-z]*",
    "import:../decoy",
    "import:/etc",
    "hf.co/../../etc:Q4_1",
    "a" * 300,
]


@pytest.fixture(scope="module")
def audited(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Path, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("fs-audit")
    dirs = {name: tmp / name for name in ("models", "import", "decoy", "hook", "home")}
    for d in dirs.values():
        d.mkdir()
    (dirs["hook"] / "sitecustomize.py").write_text(HOOK)
    (dirs["decoy"] / "secret.gguf").write_bytes(b"GGUF-not-really")
    keys = tmp / "keys"
    keys.write_text(f"{ATTACKER}\n{OPERATOR} scopes=inference,admin\n")
    log = tmp / "audit.log"
    env = {
        "PYTHONPATH": os.pathsep.join([str(dirs["hook"]), str(ROOT)]),
        "EDGED_AUDIT_LOG": str(log),
        "HOME": str(dirs["home"]),
        # Pulls must not reach out: an unroutable hub answers at once.
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }
    srv = start_server(
        tmp,
        *SMALL,
        *("--parallel", "2", "--models-dir", str(dirs["models"])),
        *("--import-dir", str(dirs["import"]), "--api-key-file", str(keys)),
        env=env,
    )
    yield srv, log, dirs
    stop_server(srv)


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _requests(name: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    msgs = [{"role": "user", "content": "hi"}]
    return [
        ("POST", "/v1/chat/completions", {"model": name, "messages": msgs, "max_tokens": 1}),
        ("POST", "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 1}),
        ("POST", "/v1/embeddings", {"model": name, "input": "hi"}),
        ("POST", "/v1/messages", {"model": name, "max_tokens": 1, "messages": msgs}),
        ("POST", "/v1/responses", {"model": name, "input": "hi", "max_output_tokens": 1}),
        ("POST", "/v1/responses", {"input": "hi", "previous_response_id": name}),
        ("GET", f"/v1/responses/{name}", None),
        ("POST", "/api/chat", {"model": name, "messages": msgs, "stream": False}),
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"request_id": name, "prompt": "hi"}),
        ("DELETE", f"/api/generate/{name}", None),
        ("POST", "/v1/chat/completions", {"messages": msgs, "lora": [{"name": name}]}),
        ("POST", "/inference", {"model": name, "prompt": "hi", "max_tokens": 1}),
        ("POST", "/v1/rerank", {"model": name, "query": "q", "documents": ["d"]}),
        ("POST", "/admin/pull", {"model": name}),
        ("POST", "/admin/pull", {"model": f"{name}:Q4_1"}),
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("POST", "/api/copy", {"source": name, "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/admin/load", {"model": name}),
        ("POST", "/admin/unload", {"model": name}),
    ]


def _allowed(dirs: dict[str, Path]) -> tuple[str, ...]:
    roots = {
        dirs["models"],
        dirs["import"],
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        ROOT,
        embedded_model_path().parent,
        Path("/proc"),
        Path("/sys"),
        Path("/dev"),
    }
    return tuple(str(r.resolve()) for r in roots)


def test_no_request_reaches_a_path_it_names(
    audited: tuple[Server, Path, dict[str, Path]],
) -> None:
    srv, log, dirs = audited
    start = log.stat().st_size
    statuses = []
    for key in (ATTACKER, OPERATOR):
        for name in NAMES:
            for method, path, body in _requests(name):
                if "\x00" in path:
                    continue  # not expressible in a URL path
                r = httpx.request(method, srv.url + path, json=body, headers=_h(key), timeout=120)
                statuses.append((key, method, path, r.status_code))
                assert r.status_code < 500, (key, method, path, body, r.text)
                assert str(dirs["decoy"]) not in r.text and str(dirs["home"]) not in r.text
    # The attacker's admin attempts all stopped at the scope.
    assert all(s == 403 for k, _, p, s in statuses if k == ATTACKER and "admin" in p)
    # A positive control: the operator's rescan lists the models folder, and the hook sees it.
    r = httpx.post(f"{srv.url}/admin/rescan", headers=_h(OPERATOR), timeout=60)
    assert r.status_code == 200
    with log.open() as f:
        f.seek(start)
        touched = [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]
    models = str(dirs["models"].resolve())
    assert any(e in ("os.scandir", "os.listdir") and p == models for e, p in touched), touched[-20:]
    allowed = _allowed(dirs)
    outside = sorted({(event, path) for event, path in touched if not path.startswith(allowed)})
    assert not outside, outside
    # And the decoy and the home directory were never opened, listed or written.
    for event, path in touched:
        assert not path.startswith((str(dirs["decoy"]), str(dirs["home"]))), (event, path)
    assert sorted(os.listdir(dirs["decoy"])) == ["secret.gguf"]
