"""fetch and pull against a local stand-in for the Hugging Face hub (real client)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from quantize.errors import FetchError
from quantize.fetch import fetch
from quantize.pull import pick_gguf, pull, sha256_file
from tests.quantize.hub import FakeHub, serve


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with serve() as h:
        yield h


def test_fetch_downloads_only_checkpoint_files(hub: FakeHub, minilm_dir: Path) -> None:
    hub.add("sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    path = fetch("sentence-transformers/all-MiniLM-L6-v2", endpoint=hub.url)
    assert path.parent.name == "snapshots"
    got = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert "model.safetensors" in got and "tokenizer.json" in got and "1_Pooling/config.json" in got
    assert "README.md" not in got  # allow_patterns left it on the hub
    assert (path / "model.safetensors").read_bytes() == (
        minilm_dir / "model.safetensors"
    ).read_bytes()
    # A second fetch is served from the cache: no file body is downloaded again.
    before = len([r for r in hub.requests if r.startswith("GET") and "/resolve/" in r])
    assert fetch("sentence-transformers/all-MiniLM-L6-v2", endpoint=hub.url) == path
    after = len([r for r in hub.requests if r.startswith("GET") and "/resolve/" in r])
    assert after == before


def test_fetch_local_directory_is_returned_as_is(minilm_dir: Path) -> None:
    assert fetch(str(minilm_dir)) == minilm_dir


def test_fetch_unknown_repo_is_a_fetch_error(hub: FakeHub) -> None:
    with pytest.raises(FetchError, match="nobody/nothing"):
        fetch("nobody/nothing", endpoint=hub.url)


def test_pull_converts_and_quantizes_a_safetensors_repo(
    hub: FakeHub, minilm_dir: Path, tmp_path: Path
) -> None:
    repo = hub.add("sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    models = tmp_path / "models"
    out = pull(
        "sentence-transformers/all-MiniLM-L6-v2", "q8_0", models, endpoint=hub.url, progress=False
    )
    assert out == models / "all-MiniLM-L6-v2.Q8_0.gguf"
    types = {t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert gguf.GGMLQuantizationType.Q8_0 in types
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["repo"] == "sentence-transformers/all-MiniLM-L6-v2" and side["revision"] == repo.sha
    assert side["type"] == "Q8_0" and side["source"] == "safetensors"
    assert side["source_sha256"] == sha256_file(minilm_dir / "model.safetensors")
    assert side["sha256"] == sha256_file(out) and side["created"].endswith("+00:00")
    assert sorted(p.name for p in models.iterdir()) == [out.name, out.with_suffix(".json").name]


def test_pull_takes_a_ready_gguf_of_that_type(
    hub: FakeHub, smollm_gguf: Path, minilm_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "repo"
    src.mkdir()
    shutil.copyfile(smollm_gguf, src / "smollm2-135m-instruct.Q4_1.gguf")
    shutil.copyfile(minilm_ggufs["q8_0"], src / "smollm2-135m-instruct.Q4_K.gguf")  # decoy name
    (src / "README.md").write_text("a GGUF repo\n")
    hub.add("someone/SmolLM2-135M-Instruct-GGUF", src)
    out = pull(
        "someone/SmolLM2-135M-Instruct-GGUF",
        "Q4_1",
        tmp_path / "m",
        endpoint=hub.url,
        progress=False,
    )
    assert out.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sha256_file(out) == sha256_file(smollm_gguf)
    assert json.loads(out.with_suffix(".json").read_text())["source"] == "gguf"
    downloads = [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]
    assert downloads and all(r.endswith("smollm2-135m-instruct.Q4_1.gguf") for r in downloads)


def test_pull_without_the_type_or_weights_fails_cleanly(hub: FakeHub, tmp_path: Path) -> None:
    src = tmp_path / "repo"
    src.mkdir()
    (src / "x.Q2_K.gguf").write_bytes(b"GGUF")
    hub.add("someone/only-q2", src)
    with pytest.raises(FetchError, match="no Q4_K_M GGUF"):
        pull("someone/only-q2", "Q4_K_M", tmp_path / "m", endpoint=hub.url, progress=False)
    assert not any((tmp_path / "m").glob("*.gguf"))


@pytest.mark.parametrize(
    ("files", "qtype", "want"),
    [
        (("a.Q4_K_M.gguf", "a.Q4_K_S.gguf"), "Q4_K_M", "a.Q4_K_M.gguf"),
        (("a.Q4_K_M.gguf",), "Q4_K", None),
        (("a-q4_0.gguf", "a-q4_0_4_4.gguf"), "Q4_0", "a-q4_0.gguf"),
        (("a.Q8_0.bin",), "Q8_0", None),
    ],
)
def test_pick_gguf_matches_whole_type_tags(
    files: tuple[str, ...], qtype: str, want: str | None
) -> None:
    assert pick_gguf(files, qtype) == want


def test_fetch_writes_where_hf_home_says_at_the_time(
    hub: FakeHub, minilm_dir: Path, tmp_path: Path
) -> None:
    """huggingface_hub fixes its cache when first imported (here, long before this test);
    a fetch still goes to the HF_HOME of the moment (the fixture's, under tmp_path), never
    to the user's cache."""
    import huggingface_hub  # noqa: F401 - imported first, as the daemon or a test may have

    hub.add("sentence-transformers/all-MiniLM-L6-v2", minilm_dir)
    path = fetch("sentence-transformers/all-MiniLM-L6-v2", endpoint=hub.url)
    assert path.is_relative_to(tmp_path / "hf_home" / "hub")
