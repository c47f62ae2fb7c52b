"""Model management over real HTTP (`edged serve` with --models-dir and --import-dir, pulls
from a local hub stand-in): path-like names are 400s that tell nothing about the file system,
another repository's model is a 409 unless replaced, and no input touches a file outside the
models folder or answers with a 5xx."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.models import REPO_ERROR
from tests.conftest import Server, start_server, stop_server
from tests.quantize.hub import FakeHub, serve

REFUSED = REPO_ERROR + " or import:NAME[:TYPE] from the import directory"


def _tiny_gguf(path: Path, name: str) -> Path:
    """A header-only GGUF (the daemon reads headers on rescan; nothing here is loaded)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_routes")


@pytest.fixture(scope="module")
def hub(root: Path) -> Iterator[FakeHub]:
    with serve() as h:
        h.add("owner/X-GGUF", _tiny_gguf(root / "hub_a" / "x.Q4_1.gguf", "owner").parent)
        h.add("attacker/X-GGUF", _tiny_gguf(root / "hub_b" / "x.Q4_1.gguf", "attacker!").parent)
        yield h


@pytest.fixture(scope="module")
def tree(root: Path) -> dict[str, Path]:
    """The models folder, the import directory, and a decoy directory nothing may touch."""
    decoy = root / "decoy"
    _tiny_gguf(decoy / "secret.Q4_1.gguf", "secret")
    _tiny_gguf(decoy / "sub" / "deeper.Q8_0.gguf", "deeper")
    imp = root / "import"
    _tiny_gguf(imp / "repo1" / "m.Q4_1.gguf", "imported")
    (imp / "escape").symlink_to(decoy)
    models = root / "models"
    _tiny_gguf(models / "tinyq.gguf", "tinyq")
    return {"decoy": decoy, "import": imp, "models": models}


@pytest.fixture(scope="module")
def srv(root: Path, hub: FakeHub, tree: dict[str, Path]) -> Iterator[Server]:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(root / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    server = start_server(
        root,
        "--models-dir",
        str(tree["models"]),
        "--import-dir",
        str(tree["import"]),
        "--threads",
        "1",
        "--parallel",
        "2",
        env=env,
    )
    yield server
    stop_server(server)


def snapshot(*dirs: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under dirs (the dirs too): kind, mtime and content (a file's bytes, a
    directory's sorted listing, a link's target)."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for top in dirs:
        for folder, subdirs, names in os.walk(top, followlinks=False):
            for p in [Path(folder), *(Path(folder) / n for n in (*subdirs, *names))]:
                st_ = p.lstat()
                if p.is_symlink():
                    data = os.readlink(p).encode()
                elif p.is_dir():
                    data = "\n".join(sorted(os.listdir(p))).encode()
                else:
                    data = p.read_bytes()
                out[str(p)] = (st_.st_mode, st_.st_mtime_ns, data)
    return out


def _admin_pull(srv: Server, body: dict[str, Any]) -> tuple[int, str]:
    with httpx.stream("POST", f"{srv.url}/admin/pull", json=body, timeout=120) as r:
        return r.status_code, r.read().decode()


def _last_line(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


PATHLIKE = [
    "/etc:Q4_1",
    "/etc",
    "~/x:Q8_0",
    "~/dl:Q8_0",
    "~",
    "../../x/y",
    "../x",
    "./x",
    "/proc/self/cwd:Q4_1",
    "x\x00y",
    "owner/na\x00me",
    "file:///etc/passwd",
    "owner/X-GGUF/../../../etc",
]


def test_path_like_names_are_400s_that_tell_nothing(srv: Server, tree: dict[str, Path]) -> None:
    before = snapshot(tree["decoy"], tree["import"])
    decoy = tree["decoy"]
    existing = [str(decoy), f"{decoy}:Q4_1", f"{decoy}/sub:Q8_0", f"{decoy}/secret.Q4_1.gguf"]
    missing = [str(decoy / "nope"), f"{decoy}/nope:Q4_1", f"{decoy}/nope/sub:Q8_0", "/nope/x.gguf"]
    for name in [*PATHLIKE, *existing, *missing]:
        status, text = _admin_pull(srv, {"model": name})
        assert status == 400, (name, text)
        assert json.loads(text)["error"]["message"] == REFUSED, name
        for body in ({"model": name, "stream": False}, {"model": name}):
            r = httpx.post(f"{srv.url}/api/pull", json=body, timeout=60)
            assert r.status_code == 400 and r.json() == {"error": REFUSED}, (name, r.text)
    # Import names: a link out of the import directory reads as a name that is not there.
    answers = []
    for rel in ("escape", "escape/secret.Q4_1.gguf", "missing", "missing/secret.Q4_1.gguf"):
        r = httpx.post(f"{srv.url}/api/pull", json={"model": f"import:{rel}", "stream": False})
        assert r.status_code == 400
        answers.append(r.json()["error"].replace(rel, "NAME"))
    assert len(set(answers)) == 1 and str(tree["import"]) not in answers[0]
    for name in ("import:../decoy", "import:/etc", "import:~/x", f"import:{decoy}"):
        status, text = _admin_pull(srv, {"model": name})
        assert status == 400 and json.loads(text)["error"]["message"] == REFUSED, name
    status, text = _admin_pull(srv, {"model": "owner/X-GGUF", "revision": "../../../x"})
    assert status == 400 and json.loads(text)["error"]["param"] == "revision"
    assert snapshot(tree["decoy"], tree["import"]) == before
    assert sorted(os.listdir(tree["models"])) == ["tinyq.gguf"]


def test_another_repository_is_a_409_unless_replaced(srv: Server, tree: dict[str, Path]) -> None:
    models = tree["models"]
    target = models / "X.Q4_1.gguf"
    status, text = _admin_pull(srv, {"model": "owner/X-GGUF:Q4_1"})
    assert status == 200 and _last_line(text)["status"] == "success", text
    owned = target.read_bytes()
    # Another owner's repository of the same name: refused before anything streams.
    status, text = _admin_pull(srv, {"model": "attacker/X-GGUF:Q4_1"})
    assert status == 409 and json.loads(text)["error"]["code"] == "conflict", text
    r = httpx.post(
        f"{srv.url}/api/pull", json={"model": "hf.co/attacker/X-GGUF:Q4_1", "stream": False}
    )
    assert r.status_code == 409 and "replace" in r.json()["error"]
    r = httpx.post(f"{srv.url}/api/pull", json={"model": "attacker/X-GGUF:Q4_1"})
    assert r.status_code == 409
    assert target.read_bytes() == owned
    # The same repository again updates in place.
    status, text = _admin_pull(srv, {"model": "owner/X-GGUF:Q4_1"})
    assert status == 200 and _last_line(text)["status"] == "success"
    # The admin asks to replace it.
    r = httpx.post(
        f"{srv.url}/api/pull",
        json={"model": "attacker/X-GGUF:Q4_1", "stream": False, "replace": True},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    assert target.read_bytes() != owned
    assert json.loads(target.with_suffix(".json").read_text())["repo"] == "attacker/X-GGUF"
    status, text = _admin_pull(srv, {"model": "owner/X-GGUF:Q4_1", "replace": True})
    assert status == 200 and _last_line(text) == {
        "status": "success",
        "model": "X.Q4_1",
        "path": str(target),
    }
    assert target.read_bytes() == owned
    # Copy onto it: 409; delete takes the file and its sidecar.
    r = httpx.post(f"{srv.url}/api/copy", json={"source": "tinyq", "destination": "X.Q4_1"})
    assert r.status_code == 409
    r = httpx.request("DELETE", f"{srv.url}/api/delete", json={"model": "X.Q4_1"})
    assert r.status_code == 200, r.text
    assert sorted(os.listdir(models)) == ["tinyq.gguf"]


def test_an_import_pull_and_its_errors(srv: Server, tree: dict[str, Path]) -> None:
    r = httpx.post(
        f"{srv.url}/api/pull", json={"model": "import:repo1:Q4_1", "stream": False}, timeout=60
    )
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    assert (tree["models"] / "repo1.Q4_1.gguf").read_bytes() == (
        tree["import"] / "repo1" / "m.Q4_1.gguf"
    ).read_bytes()
    status, text = _admin_pull(srv, {"model": "import:repo1:Q8_0"})
    last = _last_line(text)
    assert status == 200 and last["status"] == "error" and "no Q8_0 GGUF" in last["error"]
    assert str(tree["import"]) not in text
    r = httpx.request("DELETE", f"{srv.url}/api/delete", json={"model": "repo1.Q4_1"})
    assert r.status_code == 200
    assert sorted(os.listdir(tree["models"])) == ["tinyq.gguf"]


# ---- fuzz ----------------------------------------------------------------------------------

PREFIXES = [
    "",
    "/",
    "//",
    "~/",
    "~",
    "../",
    "../../",
    "./",
    "import:",
    "import:../",
    "import:/",
    "import:escape/",
    "hf.co/",
    "huggingface.co/",
    "https://huggingface.co/",
    "file://",
    "\\\\",
    "C:\\",
    "/proc/self/",
    "%2e%2e/",
    "/tmp/",
]
SEGMENT = st.text(alphabet=list("abcXYZ09._-~/:*?[]{}\\ \x00é%\n"), max_size=24)
SUFFIX = st.sampled_from(["", ":Q4_1", ":latest", ":Q8_0", ":NOPE", "/", "/..", ".gguf"])
OPS = [
    "admin_pull",
    "admin_pull_revision",
    "ollama_pull",
    "ollama_pull_stream",
    "ollama_delete",
    "ollama_copy_source",
    "ollama_copy_destination",
]


@st.composite
def names(draw: st.DrawFn, tree: dict[str, Path]) -> str:
    prefixes = [*PREFIXES, f"{tree['decoy']}/", f"{tree['import']}/", f"import:{tree['decoy']}"]
    return draw(st.sampled_from(prefixes)) + draw(SEGMENT) + draw(SUFFIX)


def _send(srv: Server, op: str, name: str) -> tuple[int, str]:
    url = srv.url
    if op == "admin_pull":
        return _admin_pull(srv, {"model": name})
    if op == "admin_pull_revision":
        return _admin_pull(srv, {"model": "owner/X-GGUF:Q4_1", "revision": name})
    if op == "ollama_pull":
        r = httpx.post(f"{url}/api/pull", json={"model": name, "stream": False}, timeout=120)
    elif op == "ollama_pull_stream":
        r = httpx.post(f"{url}/api/pull", json={"model": name}, timeout=120)
    elif op == "ollama_delete":
        r = httpx.request("DELETE", f"{url}/api/delete", json={"model": name}, timeout=60)
    elif op == "ollama_copy_source":
        r = httpx.post(f"{url}/api/copy", json={"source": name, "destination": "fuzzcopy"})
    else:
        r = httpx.post(f"{url}/api/copy", json={"source": "tinyq", "destination": name})
    return r.status_code, r.text


def _stem(file: str) -> str:
    """A model folder entry's model name (its GGUF or its pull sidecar)."""
    return file.removesuffix(".gguf").removesuffix(".json")


@pytest.mark.slow
def test_fuzz_model_routes_never_5xx_nor_touch_outside(
    srv: Server, tree: dict[str, Path], root: Path
) -> None:
    outside = snapshot(tree["decoy"], tree["import"])
    made: set[str] = set()

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(op=st.sampled_from(OPS), name=names(tree))
    def one(op: str, name: str) -> None:
        before = set(os.listdir(tree["models"]))
        status, text = _send(srv, op, name)
        assert status < 500, (op, name, text)
        if str(root) not in name:
            assert str(root) not in text.replace(str(tree["models"]), "<models>"), (op, name)
        assert snapshot(tree["decoy"], tree["import"]) == outside, (op, name)
        if op == "ollama_copy_destination" and status == 200:
            made.add(name.removesuffix(":latest"))
        if "pull" in op and status == 200 and '"success"' in text:
            # A pull that succeeded (the fake hub's own model, at any revision) adds its model
            # and sidecar, and nothing else.
            made.update(_stem(f) for f in set(os.listdir(tree["models"])) - before)
        # Nothing but the models' own files, pulled models and copies of tinyq ever appear.
        for f in os.listdir(tree["models"]):
            stem = _stem(f)
            assert f == "tinyq.gguf" or stem in made or f.startswith("."), (op, name, f)
        assert (tree["models"] / "tinyq.gguf").exists()

    one()
