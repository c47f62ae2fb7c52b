"""The `edged` CLI's model verbs with path-like names: `rm`, `show` and `list` never touch a
file outside the models folder, never crash, and take glob characters literally."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.__main__ import main

PATHISH = st.one_of(
    st.sampled_from(
        [
            "..",
            "../decoy/secret",
            "../decoy/secret.gguf",
            "/etc/passwd",
            "~",
            "~/x.gguf",
            "*",
            "*.gguf",
            "x[0-9]",
            "x[0-9]-00001-of-00002",
            "?",
            "a" * 400,
            "ünïcødé",
            "x\\y",
            "./keep",
            "keep/../keep",
        ]
    ),
    st.text(alphabet=st.sampled_from(list("ab.*?[]-/~\\ 0123456789_é")), min_size=1, max_size=40),
)


def _tree(root: Path) -> tuple[Path, Path, dict[Path, bytes]]:
    models, decoy = root / "models", root / "decoy"
    models.mkdir()
    decoy.mkdir()
    files = {
        models / "keep.gguf": b"GGUF keep",
        models / "x1-00001-of-00002.gguf": b"GGUF part 1",
        models / "x1-00002-of-00002.gguf": b"GGUF part 2",
        decoy / "secret.gguf": b"GGUF secret",
        decoy / "x[0-9]-00002-of-00002.gguf": b"GGUF decoy part",
    }
    for p, data in files.items():
        p.write_bytes(data)
    return models, decoy, files


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No hub, and `~` and `..` lead into a scratch folder: `edged pull DIR` is the local
    user's own import, which would otherwise walk this machine's home or checkout."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    scratch = tmp_path_factory.mktemp("scratch")
    (scratch / "home").mkdir()
    (scratch / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(scratch / "home"))
    monkeypatch.chdir(scratch / "cwd")


def _run(*argv: str) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return main(list(argv))
        except SystemExit as exc:  # argparse refusing an argument
            return int(exc.code or 0)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=PATHISH, verb=st.sampled_from(["rm", "show", "pull"]))
def test_model_verbs_touch_nothing_outside(
    tmp_path_factory: pytest.TempPathFactory, name: str, verb: str
) -> None:
    root = tmp_path_factory.mktemp("cli")
    models, decoy, files = _tree(root)
    # pull: no hub is reachable here (HF_HUB_OFFLINE), so only the source parsing runs.
    code = _run(verb, name, "--models-dir", str(models))
    assert code in (0, 1, 2)
    for p, data in files.items():
        if p.parent == decoy or (p.name == "keep.gguf" and name not in ("keep", "./keep")):
            assert p.exists() and p.read_bytes() == data, (verb, name, p)
    assert sorted(x.name for x in decoy.iterdir()) == sorted(
        p.name for p in files if p.parent == decoy
    )


def test_rm_takes_a_split_models_name_literally(tmp_path: Path) -> None:
    models, decoy, files = _tree(tmp_path)
    assert _run("rm", "x1", "--models-dir", str(models)) == 0
    assert sorted(p.name for p in models.iterdir()) == ["keep.gguf"]
    assert (decoy / "x[0-9]-00002-of-00002.gguf").exists()
    assert _run("rm", "x[0-9]", "--models-dir", str(models)) == 1  # no such model here
    assert _run("rm", str(decoy / "secret.gguf"), "--models-dir", str(models)) == 1
    assert (decoy / "secret.gguf").read_bytes() == files[decoy / "secret.gguf"]
