"""Kept state is keyed by the model file's identity, not its name (issue 25 row 5).

A model replaced under the same name (here: the embedded SmolLM2 with one tensor byte
changed, copied over the served file) never resumes state the old weights computed: an
old request_id is refused with a 400 saying the model file changed, an old Responses
`previous_response_id` is recomputed from its text history (no cached tokens), and a
prompt-cache spill file of another identity is not restored. With the same file, all of
them resume.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from daemon.engine.caches.cache import SequenceStore
from daemon.engine.caches.prompt_cache import BLOCK, PromptCache
from daemon.engine.loading.identity import file_identity, file_sha256
from daemon.engine.types import SavedSequence
from tests.conftest import Server, start_server, stop_server

# ---- the identity itself ---------------------------------------------------------------


def test_identity_follows_the_content_not_the_name(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF" + bytes(3 << 20))
    first = file_identity(p)
    assert first == file_identity(p)  # cached, and stable
    data = bytearray(p.read_bytes())
    data[-5] ^= 1
    p.write_bytes(bytes(data))  # same name, same size, new content (and mtime)
    os.utime(p, ns=(1, 1))
    assert file_identity(p) != first
    q = tmp_path / "copy.gguf"
    shutil.copyfile(p, q)
    assert file_identity(q) == file_identity(p)


def test_a_pulled_models_sidecar_describes_it(tmp_path: Path, model_path: Path) -> None:
    """A pull records size and mtime beside the sha256, so loading a pulled model reads the
    digest from its sidecar instead of hashing the whole file again."""
    from daemon.engine.loading.identity import _sidecar_sha256
    from quantize.pull import pull, sha256_file

    src = tmp_path / "repo"
    src.mkdir()
    shutil.copyfile(model_path, src / "smol.Q4_1.gguf")
    out = pull("me/smol-GGUF", "Q4_1", tmp_path / "models", local_dir=src, progress=False)
    side = _sidecar_sha256(out, out.stat())
    assert side is not None and side == sha256_file(out)


def test_the_pull_sidecar_counts_only_while_it_describes_the_file(tmp_path: Path) -> None:
    p = tmp_path / "pulled.gguf"
    p.write_bytes(b"GGUF" + bytes(1000))
    st = p.stat()
    fake = "ab" * 32
    side = {"sha256": fake, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    p.with_suffix(".json").write_text(json.dumps(side))
    assert file_sha256(p) == fake  # the cheap path: no hashing
    p.write_bytes(b"GGUF" + bytes(999) + b"\x01")  # replaced: the sidecar is stale
    os.utime(p, ns=(st.st_mtime_ns + 10, st.st_mtime_ns + 10))
    assert file_sha256(p) != fake
    p.with_suffix(".json").write_text(json.dumps({"sha256": fake}))  # nothing to check it by
    os.utime(p, ns=(st.st_mtime_ns + 20, st.st_mtime_ns + 20))
    assert file_sha256(p) != fake


def test_a_split_models_identity_covers_every_part(tmp_path: Path) -> None:
    parts = [tmp_path / f"big-0000{i}-of-00002.gguf" for i in (1, 2)]
    for i, p in enumerate(parts):
        p.write_bytes(bytes([i]) * 100)
    first = file_identity(parts[0])
    parts[1].write_bytes(bytes([7]) * 100)
    os.utime(parts[1], ns=(5, 5))
    assert file_identity(parts[0]) != first


# ---- stores refuse state of another identity ---------------------------------------


def test_request_id_spill_files_carry_the_identity(tmp_path: Path) -> None:
    store = SequenceStore(0, spill_dir=tmp_path)
    e = SavedSequence((1, 2), (3,), 2, b"kv", model_id="abc")
    store.claim(("k", "x"))
    store.release(("k", "x"), e)
    store.flush()
    got = SequenceStore(0, spill_dir=tmp_path).claim(("k", "x"))
    assert got is not None and got.model_id == "abc"


def test_a_prompt_cache_spill_of_another_identity_is_not_restored(tmp_path: Path) -> None:
    tokens = [[i * 1000 + t for t in range(BLOCK + 8)] for i in range(2)]
    cache = PromptCache(3000, spill_dir=tmp_path, identity="old")
    for t in tokens:  # the second save pushes the first to disk
        assert cache.save("k", t, lambda: b"s" * 1000)
    cache.flush()
    assert cache.disk_bytes > 0
    hit = cache.lookup("k", tokens[0] + [1, 2, 3])
    assert hit is not None and cache.load(hit) == b"s" * 1000
    cache.set_limit(1)  # both on disk now
    cache.flush()
    cache.set_limit(None)
    cache.identity = "new"  # the file now read under another model file's identity
    hit = cache.lookup("k", tokens[1] + [1, 2, 3])
    assert hit is not None and cache.load(hit) is None
    cache.clear()


# ---- over real HTTP: the file replaced under the same name ----------------------------


@pytest.fixture(scope="module")
def served(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("identity")
    models = tmp / "models"
    models.mkdir()
    shutil.copyfile(model_path, models / "m.gguf")
    srv = start_server(
        tmp,
        *("--models-dir", str(models), "--store-dir", str(tmp / "store")),
        *("--parallel", "2", "--threads", "1", "--ctx-size", "1024"),
    )
    yield srv, models / "m.gguf"
    stop_server(srv)


def _gen(srv: Server, rid: str, prompt: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "m",
        "request_id": rid,
        "stream_response": False,
        "generation_config": {"do_sample": False, "max_new_tokens": 4},
    }
    if prompt is not None:
        body["prompt"] = prompt
    return httpx.post(f"{srv.url}/api/generate", json=body, timeout=600)


def _turn(srv: Server, text: str, prev: str | None = None) -> Any:
    c = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=600)
    return c.responses.create(
        model="m", input=text, previous_response_id=prev, max_output_tokens=4, temperature=0
    )


def _unload(srv: Server) -> None:
    r = httpx.post(f"{srv.url}/admin/unload", json={"model": "m"}, timeout=600)
    assert r.status_code == 200, r.text


def _replace(path: Path) -> None:
    """Copy another file of the model over `path`: one tensor byte differs."""
    data = bytearray(path.read_bytes())
    data[len(data) - 4096] ^= 0x01
    tmp = path.with_suffix(".new")
    tmp.write_bytes(bytes(data))
    shutil.copyfile(tmp, path)  # in place: same name, same inode
    tmp.unlink()


STORY = "Once upon a time, there was a cat who"


def test_a_replaced_model_file_never_resumes_old_state(served: tuple) -> None:
    srv, path = served
    assert _gen(srv, "old", STORY).status_code == 200
    first = _turn(srv, "Tell me a story about a cat.")
    # Same file, reloaded: both resume.
    _unload(srv)
    assert _gen(srv, "old").status_code == 200
    second = _turn(srv, "And then?", prev=first.id)
    assert second.usage.input_tokens_details.cached_tokens > 0
    # Another file under the same name: refused / recomputed.
    _replace(path)
    _unload(srv)
    r = _gen(srv, "old")
    assert r.status_code == 400, r.text
    assert "model file changed" in r.text
    third = _turn(srv, "What happened next?", prev=second.id)
    assert third.output and third.usage.input_tokens_details.cached_tokens == 0
    assert third.usage.input_tokens > second.usage.input_tokens  # the whole history
    # State made by the new file resumes on it.
    assert _gen(srv, "new", STORY).status_code == 200
    _unload(srv)
    assert _gen(srv, "new").status_code == 200
    fourth = _turn(srv, "Go on.", prev=third.id)
    assert fourth.usage.input_tokens_details.cached_tokens > 0
