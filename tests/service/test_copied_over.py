"""A model file copied over in place (`cp new.gguf models/m.gguf`: the same inode, truncated,
then written) while a request decodes on it. llama.cpp maps weights from the file by
default, and a page the truncation removed is a SIGBUS at its next read: the daemon would
end, as llama-server does. Under `--no-mmap` the weights were read into memory: the request
finishes on them, exactly, and the next one loads the new file."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from tests.conftest import start_server, stop_server
from tests.service.conftest import COUNTING

TOKENS = 160


def _body(stream: bool) -> dict:
    return {
        "model": "m",
        "prompt": COUNTING,
        "max_tokens": TOKENS,
        "temperature": 0,
        "stream": stream,
    }


def _copy_over(src: bytes, dst: Path) -> None:
    """What `cp` does to an existing file: open it truncated, then write."""
    with dst.open("wb") as f:
        f.flush()
        time.sleep(0.3)  # the file is empty for a while: any read of a mapped page faults
        f.write(src)


def test_no_mmap_outlives_a_copy_over_the_model_in_use(tmp_path: Path, model_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(model_path, models / "m.gguf")
    srv = start_server(
        tmp_path,
        "--models-dir",
        str(models),
        "--no-mmap",
        "--exact",
        "--threads",
        "1",
        "--ctx-size",
        "512",
        "--parallel",
        "1",
    )
    try:
        url = f"{srv.url}/v1/completions"
        ref = httpx.post(url, json=_body(False), timeout=300).json()["choices"][0]
        assert ref["finish_reason"] == "length"
        text, finish, copied = "", None, False
        with httpx.stream("POST", url, json=_body(True), timeout=300) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finish = choice["finish_reason"] or finish
                if not copied and text:  # decoding has begun: copy over the file now
                    _copy_over(model_path.read_bytes(), models / "m.gguf")
                    copied = True
        assert srv.proc.poll() is None, "the daemon ended"
        assert copied and finish == "length" and text == ref["text"]
        # The next request loads the file now there (the same weights: the same text).
        again = httpx.post(url, json=_body(False), timeout=300)
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["text"] == ref["text"]
    finally:
        stop_server(srv)
