"""`edged pull` of a GGUF repository with a vision projector: the projector comes along,
paired by name, and the daemon's model management treats it as part of its model."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from quantize.pull import pick_gguf, pick_projector, pull
from tests.conftest import start_server, stop_server
from tests.media.conftest import ARGS
from tests.media.tiny_vlm import png_bytes, sample_image
from tests.quantize.hub import FakeHub, serve

REPO = "someone/TinyVLM-GGUF"
B64 = base64.b64encode(png_bytes(sample_image(seed=5))).decode()


def test_a_projector_is_never_taken_for_the_model() -> None:
    files = ("mmproj-x-f16.gguf", "x-Q8_0.gguf", "x.imatrix.F16.gguf")
    assert pick_gguf(files, "F16") is None
    assert pick_gguf(files, "Q8_0") == "x-Q8_0.gguf"


@pytest.mark.parametrize(
    ("model", "files", "want"),
    [
        # The type closest in bits to the model's.
        ("x-Q8_0.gguf", ("mmproj-x-f16.gguf", "mmproj-x-f32.gguf"), "mmproj-x-f16.gguf"),
        ("x-F32.gguf", ("mmproj-x-f16.gguf", "mmproj-x-f32.gguf"), "mmproj-x-f32.gguf"),
        ("x-Q4_K_M.gguf", ("mmproj-x-Q8_0.gguf", "mmproj-x-f16.gguf"), "mmproj-x-Q8_0.gguf"),
        # The model's own folder before one above it; never another branch of the tree.
        ("a/x-Q8_0.gguf", ("mmproj.gguf", "a/mmproj-a-f16.gguf"), "a/mmproj-a-f16.gguf"),
        ("a/x-Q8_0.gguf", ("b/mmproj-b-Q8_0.gguf", "mmproj-f32.gguf"), "mmproj-f32.gguf"),
        ("a/x-Q8_0.gguf", ("b/mmproj-b-Q8_0.gguf",), None),
        ("x-Q8_0.gguf", ("x-Q4_0.gguf", "README.md"), None),
    ],
)
def test_the_projector_picked_beside_a_model(
    model: str, files: tuple[str, ...], want: str | None
) -> None:
    assert pick_projector((model, *files), model) == want


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with serve() as h:
        yield h


@pytest.fixture
def repo(tmp_path: Path, vlm_lm_path: Path, mmproj: dict[str, Path]) -> Path:
    """A GGUF repository as people publish vision models: the model in one type, its
    projector in two."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copyfile(vlm_lm_path, root / "TinyVLM-Q8_0.gguf")
    shutil.copyfile(mmproj["f16"], root / "mmproj-TinyVLM-f16.gguf")
    shutil.copyfile(mmproj["f32"], root / "mmproj-TinyVLM-f32.gguf")
    return root


def test_pull_fetches_the_projector_beside_the_model(
    hub: FakeHub, repo: Path, tmp_path: Path, mmproj: dict[str, Path]
) -> None:
    hub.add(REPO, repo)
    models = tmp_path / "models"
    out = pull(REPO, "Q8_0", models, endpoint=hub.url, progress=False)
    assert out == models / "TinyVLM.Q8_0.gguf"
    beside = models / "mmproj-TinyVLM.Q8_0.gguf"
    assert beside.read_bytes() == mmproj["f16"].read_bytes()
    side = json.loads((models / "TinyVLM.Q8_0.json").read_text())
    assert side["projector"]["file"] == "mmproj-TinyVLM-f16.gguf"
    assert sorted(p.name for p in models.iterdir()) == [
        "TinyVLM.Q8_0.gguf",
        "TinyVLM.Q8_0.json",
        "mmproj-TinyVLM.Q8_0.gguf",
    ]


def test_the_daemon_pulls_serves_copies_and_deletes_a_vision_model(
    hub: FakeHub, repo: Path, tmp_path: Path
) -> None:
    """Through the daemon (no keys: the local user has every scope): the pulled model sees
    images and its projector is never listed as a model; a copy sees them too; a re-pull of
    the repository once it has no projector leaves no stale one; deleting a model deletes
    its projector."""
    hub.add(REPO, repo)
    models = tmp_path / "models"
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    srv = start_server(tmp_path, *ARGS, "--models-dir", str(models), env=env)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + B64}}
    try:
        with httpx.Client(base_url=srv.url, timeout=300) as c:

            def sees(name: str) -> bool:
                text = {"type": "text", "text": "What is this?"}
                body = {
                    "model": name,
                    "messages": [{"role": "user", "content": [image, text]}],
                    "max_tokens": 2,
                    "temperature": 0,
                }
                r = c.post("/v1/chat/completions", json=body)
                assert r.status_code in (200, 400), r.text
                return r.status_code == 200

            r = c.post("/api/pull", json={"model": f"{REPO}:Q8_0", "stream": False})
            assert r.status_code == 200, r.text
            ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
            assert "TinyVLM.Q8_0" in ids and not any("mmproj" in name for name in ids)
            assert sees("TinyVLM.Q8_0")

            r = c.post("/api/copy", json={"source": "TinyVLM.Q8_0", "destination": "seer"})
            assert r.status_code == 200, r.text
            assert (models / "mmproj-seer.gguf").is_file()
            assert sees("seer")

            for p in repo.glob("mmproj-*"):
                p.unlink()
            hub.add(REPO, repo)
            r = c.post("/api/pull", json={"model": f"{REPO}:Q8_0", "stream": False})
            assert r.status_code == 200, r.text
            assert (models / "TinyVLM.Q8_0.gguf").is_file()
            assert not (models / "mmproj-TinyVLM.Q8_0.gguf").exists()
            assert not sees("TinyVLM.Q8_0")  # a 400: it has no projector any more

            r = c.request("DELETE", "/api/delete", json={"model": "seer"})
            assert r.status_code == 200, r.text
            assert not (models / "mmproj-seer.gguf").exists()
            assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [
                "TinyVLM.Q8_0.gguf",
                "TinyVLM.Q8_0.json",
            ]
    finally:
        stop_server(srv)
