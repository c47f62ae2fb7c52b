"""The model service's rules (daemon/models) on real files, a real registry and a local hub
stand-in: what a model reference may name, who may overwrite whom, and what a delete removes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import models
from daemon.app import engine_options
from daemon.config import Settings, embedded_model_path
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import Conflict, InvalidRequest, ModelNotFound
from daemon.models import files
from tests.conftest import ROOT, free_port
from tests.quantize.hub import FakeHub, serve

REFUSED = models.REPO_ERROR + " or import:NAME[:TYPE] from the import directory"


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An import directory (a GGUF repository, a lone GGUF, links in and out) beside a decoy
    directory holding a GGUF that nothing may read."""
    imp = tmp_path / "import"
    (imp / "repo1").mkdir(parents=True)
    (imp / "repo1" / "m.Q4_1.gguf").write_bytes(b"GGUF" + b"\1" * 32)
    (imp / "lone.Q8_0.gguf").write_bytes(b"GGUF" + b"\2" * 32)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "secret.Q4_1.gguf").write_bytes(b"GGUF" + b"\3" * 32)
    (imp / "escape").symlink_to(decoy)
    (imp / "inner").mkdir()
    (imp / "inner" / "x.Q4_1.gguf").symlink_to(decoy / "secret.Q4_1.gguf")
    (imp / "within").symlink_to(imp / "repo1")
    return {"import": imp, "decoy": decoy, "models": tmp_path / "models"}


GOOD = [
    ("owner/name", "owner/name", "Q4_K_M"),
    ("hf.co/owner/name:Q8_0", "owner/name", "Q8_0"),
    ("huggingface.co/a.b/c_d-e:latest", "a.b/c_d-e", "Q4_K_M"),
    ("https://huggingface.co/Org/X-GGUF:q4_1", "Org/X-GGUF", "Q4_1"),
    (
        "bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M",
        "bartowski/SmolLM2-135M-Instruct-GGUF",
        "Q4_K_M",
    ),
]


@pytest.mark.parametrize(("text", "repo", "qtype"), GOOD)
def test_hub_ids_that_are_accepted(text: str, repo: str, qtype: str) -> None:
    source = models.parse_source(text)
    assert isinstance(source, models.HubSource)
    assert (source.repo, source.type) == (repo, qtype)


BAD = [
    "",
    "x",
    "owner",
    "owner/name/extra",
    "owner/",
    "/name",
    "../../x/y",
    "../x",
    "owner/..",
    "../name",
    "./a",
    "owner/.name",
    ".owner/name",
    "-owner/name",
    "owner/name-",
    "a--b/c",
    "a/b..c",
    "/etc",
    "/etc:Q4_1",
    "/etc/passwd",
    "~/x:Q8_0",
    "~root/x",
    "~/dl:Q8_0",
    "owner/na\x00me",
    "owner/name\x00:Q4_1",
    "owner/na*me",
    "owner/na[0-9]me",
    "owner/name?",
    "owner/na me",
    "owner\\name",
    "ówner/name",
    "owner/naïve",
    "owner/名前",
    "a" * 60 + "/" + "b" * 60,
    "o/" + "n" * 200,
    "C:/x",
    "file:///etc/passwd",
    "http://evil.example/a/b",
    "hf.co//etc",
    "hf.co/../../etc",
]


@pytest.mark.parametrize("text", BAD)
def test_anything_else_is_one_400(text: str, tree: dict[str, Path]) -> None:
    with pytest.raises(InvalidRequest) as exc:
        models.parse_source(text, import_dir=tree["import"])
    assert exc.value.message == REFUSED and exc.value.param == "model"


def test_existing_and_missing_paths_get_the_same_answer(tree: dict[str, Path]) -> None:
    answers = set()
    for d in (tree["decoy"], tree["decoy"] / "nothing-here", tree["import"], Path("/tmp")):
        for text in (str(d), f"{d}:Q4_1", f"{d}/:Q8_0"):
            with pytest.raises(InvalidRequest) as exc:
                models.parse_source(text, import_dir=tree["import"])
            answers.add(exc.value.message)
    assert answers == {REFUSED}
    without = set()
    for text in (str(tree["decoy"]), "/nope/nothing"):
        with pytest.raises(InvalidRequest) as exc:
            models.parse_source(text)
        without.add(exc.value.message)
    assert without == {models.REPO_ERROR}


def test_unknown_type_and_bad_revision_are_400s() -> None:
    with pytest.raises(InvalidRequest, match="unknown quantization type"):
        models.parse_source("a/b:NOT_A_QUANT")
    for rev in ("../../x", "/abs", "a//b", "a\x00", "main/", "é"):
        with pytest.raises(InvalidRequest) as exc:
            models.parse_source("a/b", revision=rev)
        assert exc.value.param == "revision"
    assert models.parse_source("a/b", revision="refs/pr/1").revision == "refs/pr/1"  # type: ignore[union-attr]


def test_import_names_resolve_inside_the_import_directory(tree: dict[str, Path]) -> None:
    imp = tree["import"]
    src = models.parse_source("import:repo1:Q4_1", import_dir=imp)
    assert isinstance(src, models.LocalSource)
    assert src.path == (imp / "repo1").resolve() and src.label == "import:repo1"
    assert (src.name, src.type) == ("repo1", "Q4_1")
    lone = models.parse_source("import:lone.Q8_0.gguf:Q8_0", import_dir=imp)
    assert isinstance(lone, models.LocalSource) and lone.name == "lone"
    # A link that stays inside is fine.
    assert models.parse_source("import:within", import_dir=imp).path == src.path  # type: ignore[union-attr]


def test_import_names_that_escape_or_miss_are_refused_alike(tree: dict[str, Path]) -> None:
    imp = tree["import"]
    answers = {}
    for rel in ("escape", "missing", "escape/secret.Q4_1.gguf", "repo1/nothing"):
        with pytest.raises(InvalidRequest) as exc:
            models.parse_source(f"import:{rel}", import_dir=imp)
        answers[rel] = exc.value.message
        assert str(tree["decoy"]) not in exc.value.message
        assert exc.value.message == f"no `import:{rel}` in the import directory"
    for text in (
        "import:../decoy",
        "import:/etc",
        "import:~/x",
        "import:a\x00b",
        "import:.hidden",
        "import:repo1/../../decoy",
        "import:-x",
        "import:a//b",
        "import:" + "/".join("a" * 9),
        "import:*",
        "import:repo[1]",
    ):
        with pytest.raises(InvalidRequest) as exc:
            models.parse_source(text, import_dir=imp)
        assert exc.value.message == REFUSED, text
    with pytest.raises(InvalidRequest, match="links outside the import directory"):
        models.parse_source("import:inner", import_dir=imp)
    with pytest.raises(InvalidRequest, match="no import directory"):
        models.parse_source("import:repo1")
    with pytest.raises(InvalidRequest, match="no revision"):
        models.parse_source("import:repo1", import_dir=imp, revision="main")


# ---- pulls: names, collisions, replace -----------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with serve() as h:
        yield h


def _repo(root: Path, files_: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files_.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _pull(hub: FakeHub, text: str, folder: Path, replace: bool = False) -> Path:
    plan = models.plan_pull(models.parse_source(text), folder, replace=replace)
    return models.run_pull(plan, endpoint=hub.url)


def test_another_owners_repo_never_overwrites_silently(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("owner/X-GGUF", _repo(tmp_path / "a", {"x.Q4_K_M.gguf": b"GGUF-owner"}))
    hub.add("attacker/X-GGUF", _repo(tmp_path / "b", {"x.Q4_K_M.gguf": b"GGUF-attacker"}))
    folder = tmp_path / "models"
    out = _pull(hub, "owner/X-GGUF:Q4_K_M", folder)
    assert out == folder / "X.Q4_K_M.gguf" and out.read_bytes() == b"GGUF-owner"
    with pytest.raises(Conflict, match="another source"):
        _pull(hub, "attacker/X-GGUF:Q4_K_M", folder)
    # The same check runs again right before the rename (a plan made before the first pull).
    late = models.plan_pull(models.parse_source("attacker/X-GGUF:Q4_K_M"), tmp_path / "other")
    late = models.PullPlan(late.source, folder, False)
    with pytest.raises(Conflict):
        models.run_pull(late, endpoint=hub.url)
    assert out.read_bytes() == b"GGUF-owner"
    assert files.origin(out) == "owner/X-GGUF"
    assert sorted(p.name for p in folder.iterdir()) == ["X.Q4_K_M.gguf", "X.Q4_K_M.json"]

    # The admin asks to replace: the file is swapped atomically, and its sidecar with it.
    before = os.stat(out).st_ino
    _pull(hub, "attacker/X-GGUF:Q4_K_M", folder, replace=True)
    assert out.read_bytes() == b"GGUF-attacker" and files.origin(out) == "attacker/X-GGUF"
    assert os.stat(out).st_ino != before


def test_a_repull_of_the_same_repo_updates_in_place(hub: FakeHub, tmp_path: Path) -> None:
    root = _repo(tmp_path / "a", {"x.Q4_1.gguf": b"GGUF-v1"})
    hub.add("owner/X-GGUF", root)
    folder = tmp_path / "models"
    out = _pull(hub, "owner/X-GGUF:Q4_1", folder)
    (root / "x.Q4_1.gguf").write_bytes(b"GGUF-v2, longer")  # the stand-in tags by size
    hub.add("owner/X-GGUF", _repo(root, {"README.md": b"v2"}))  # a new commit
    assert _pull(hub, "hf.co/owner/X-GGUF:Q4_1", folder) == out
    assert out.read_bytes() == b"GGUF-v2, longer"


def test_a_file_without_provenance_is_not_overwritten(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("owner/X-GGUF", _repo(tmp_path / "a", {"x.Q4_1.gguf": b"GGUF-hub"}))
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "X.Q4_1.gguf").write_bytes(b"GGUF-mine")
    with pytest.raises(Conflict):
        _pull(hub, "owner/X-GGUF:Q4_1", folder)
    assert (folder / "X.Q4_1.gguf").read_bytes() == b"GGUF-mine"
    assert not list(folder.glob(".pull-*"))


def test_replacing_a_split_model_leaves_no_stale_part(hub: FakeHub, tmp_path: Path) -> None:
    split = {f"X-Q4_1-{k:05d}-of-00003.gguf": b"GGUF%d" % k for k in (1, 2, 3)}
    hub.add("owner/X-GGUF", _repo(tmp_path / "a", split))
    hub.add("other/X-GGUF", _repo(tmp_path / "b", {"x.Q4_1.gguf": b"GGUF-one"}))
    folder = tmp_path / "models"
    first = _pull(hub, "owner/X-GGUF:Q4_1", folder)
    assert first.name == "X.Q4_1-00001-of-00003.gguf"
    assert len(files.model_files(folder, "X.Q4_1")) == 4  # three parts and the sidecar
    _pull(hub, "other/X-GGUF:Q4_1", folder, replace=True)
    assert sorted(p.name for p in folder.iterdir()) == ["X.Q4_1.gguf", "X.Q4_1.json"]


def test_an_import_pull_records_its_import_name(tree: dict[str, Path]) -> None:
    folder = tree["models"]
    plan = models.plan_pull(
        models.parse_source("import:repo1:Q4_1", import_dir=tree["import"]), folder
    )
    out = models.run_pull(plan)
    assert out == folder / "repo1.Q4_1.gguf"
    assert files.origin(out) == "import:repo1"
    side = json.loads(out.with_suffix(".json").read_text())
    assert str(tree["import"]) not in json.dumps(side)
    lone = models.plan_pull(
        models.parse_source("import:lone.Q8_0.gguf:Q8_0", import_dir=tree["import"]), folder
    )
    assert models.run_pull(lone).read_bytes() == (tree["import"] / "lone.Q8_0.gguf").read_bytes()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_pull_errors_name_only_the_source(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("owner/only-q2", _repo(tmp_path / "a", {"x.Q2_K.gguf": b"GGUF"}))
    with pytest.raises(models.service.NotFound) as exc:
        _pull(hub, "owner/only-q2:Q4_1", tmp_path / "models")
    assert "no Q4_1 GGUF" in exc.value.message and str(tmp_path) not in exc.value.message
    with pytest.raises(models.service.NotFound) as exc:
        _pull(hub, "nobody/nothing", tmp_path / "models")
    assert exc.value.message == "pull failed: `nobody/nothing` was not found"


# ---- delete and copy -----------------------------------------------------------------------


def _registry(folder: Path) -> ModelRegistry:
    return ModelRegistry(embedded_model_path(), engine_options(Settings()), models_dir=folder)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for name in (
        "x5-00001-of-00002.gguf",
        "x5-00002-of-00002.gguf",
        "x5-00001-of-00002.json",
        "x[0-9]-00001-of-00002.gguf",
        "x[0-9]-00002-of-00002.gguf",
        "x5.Q4_1.gguf",
        "x5.Q4_1.json",
        "other.gguf",
        "notes.txt",
    ):
        (d / name).write_bytes(b"GGUF" + name.encode())
    return d


def test_delete_removes_every_part_and_the_sidecar_and_nothing_else(folder: Path) -> None:
    reg = _registry(folder)
    gone = asyncio.run(models.delete(reg, folder, "x5"))
    assert sorted(gone) == [
        "x5-00001-of-00002.gguf",
        "x5-00001-of-00002.json",
        "x5-00002-of-00002.gguf",
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "other.gguf",
        "x5.Q4_1.gguf",
        "x5.Q4_1.json",
        "x[0-9]-00001-of-00002.gguf",
        "x[0-9]-00002-of-00002.gguf",
    ]
    # A name with glob characters is a name, not a pattern.
    asyncio.run(models.delete(reg, folder, "x[0-9]"))
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "other.gguf",
        "x5.Q4_1.gguf",
        "x5.Q4_1.json",
    ]
    assert not reg.knows("x5") and not reg.knows("x[0-9]") and reg.knows("other")


def test_delete_is_refused_while_leased(folder: Path) -> None:
    reg = _registry(folder)
    reg.hold("other")
    reg.hold("other")
    with pytest.raises(Conflict, match="in use by 2 requests; retry when it is idle"):
        asyncio.run(models.delete(reg, folder, "other"))
    with pytest.raises(Conflict, match="in use by 2 requests"):
        asyncio.run(models.unload(reg, "other"))
    assert (folder / "other.gguf").exists()
    reg.unhold("other")
    reg.unhold("other")
    asyncio.run(models.delete(reg, folder, "other:latest"))
    assert not (folder / "other.gguf").exists()


def test_delete_refuses_what_is_not_a_file_of_the_folder(folder: Path, tmp_path: Path) -> None:
    reg = _registry(folder)
    with pytest.raises(InvalidRequest, match="default model"):
        asyncio.run(models.delete(reg, folder, reg.default_name))
    with pytest.raises(ModelNotFound):
        asyncio.run(models.delete(reg, folder, "nope"))  # never the zero-config stand-in
    for name in ("../decoy", "/etc/passwd", "x*", "x?"):
        with pytest.raises(ModelNotFound):
            asyncio.run(models.delete(reg, folder, name))
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF" + bytes(60))
    reg.rescan({"alias": "other", "ext": str(outside)})
    with pytest.raises(InvalidRequest, match="alias"):
        asyncio.run(models.delete(reg, folder, "alias"))
    with pytest.raises(InvalidRequest, match="not in the models directory"):
        asyncio.run(models.delete(reg, folder, "outside"))
    assert outside.exists()


def test_copy_to_an_existing_name_is_a_conflict(folder: Path) -> None:
    reg = _registry(folder)
    assert asyncio.run(models.copy(reg, folder, "x5", "y")) == "y"
    assert sorted(p.name for p in folder.glob("y*")) == [
        "y-00001-of-00002.gguf",
        "y-00001-of-00002.json",
        "y-00002-of-00002.gguf",
    ]
    assert (folder / "y-00002-of-00002.gguf").read_bytes() == (
        folder / "x5-00002-of-00002.gguf"
    ).read_bytes()
    for taken in ("y", "other", "x5.Q4_1", reg.default_name):
        with pytest.raises(Conflict):
            asyncio.run(models.copy(reg, folder, "other", taken))
    for bad in ("../etc", "/tmp/x", "a/b", "x-00001-of-00002", ".hidden", "a\x00"):
        with pytest.raises(InvalidRequest):
            asyncio.run(models.copy(reg, folder, "other", bad))
    with pytest.raises(ModelNotFound):
        asyncio.run(models.copy(reg, folder, "/etc/passwd", "z"))


# ---- the CLI: the same rules -----------------------------------------------------------------


def _edged(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_pull_refuses_another_repo_unless_replace_and_rm_takes_names_literally(
    hub: FakeHub, folder: Path, tmp_path: Path
) -> None:
    hub.add("owner/X-GGUF", _repo(tmp_path / "a", {"x.Q4_1.gguf": b"GGUF-owner"}))
    hub.add("attacker/X-GGUF", _repo(tmp_path / "b", {"x.Q4_1.gguf": b"GGUF-attacker"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGED_", "HF_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf"),
        EDGED_MODELS_DIR=str(folder),
        EDGED_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert _edged("pull", "owner/X-GGUF:Q4_1", env=env).returncode == 0
    r = _edged("pull", "attacker/X-GGUF:Q4_1", env=env)
    assert r.returncode == 1 and "another source" in r.stderr and "--replace" in r.stderr
    assert (folder / "X.Q4_1.gguf").read_bytes() == b"GGUF-owner"
    r = _edged("pull", "--replace", "attacker/X-GGUF:Q4_1", env=env)
    assert r.returncode == 0, r.stderr
    assert (folder / "X.Q4_1.gguf").read_bytes() == b"GGUF-attacker"
    # `edged rm 'x[0-9]'` removes that model's parts, not x5's.
    r = _edged("rm", "x[0-9]", env=env)
    assert r.returncode == 0, r.stderr
    left = sorted(p.name for p in folder.iterdir())
    assert "x5-00002-of-00002.gguf" in left and not any(f.startswith("x[") for f in left)
    assert _edged("rm", "x5", "X.Q4_1", env=env).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "other.gguf",
        "x5.Q4_1.gguf",
        "x5.Q4_1.json",
    ]
