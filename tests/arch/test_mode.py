"""What `/props` and `/admin/ps` say of each architecture class (`decoding`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from tests.arch.models import WINDOW

WANT = {
    "gemma2": (f"sliding window {WINDOW} (full cache)", "ngram"),
    "mamba2": (
        "recurrent state (resumes whole sequences only)",
        "off: recurrent state (rejected drafts cannot be removed from it)",
    ),
    "lfm2": (
        "hybrid attention + recurrent state (resumes whole sequences only)",
        "off: recurrent state (rejected drafts cannot be removed from it)",
    ),
    "qwen3moe": ("kv cache", "ngram"),
}


@pytest.mark.parametrize("kind", sorted(WANT))
def test_decoding_names_the_memory_and_what_is_off(arch_models: dict[str, Path], kind: str) -> None:
    options = EngineOptions(ctx_size=256, parallel=2, exact=False, speculate=True)
    lm = LoadedModel(kind, arch_models[kind], options)
    try:
        memory, speculation = WANT[kind]
        assert lm.mode.as_dict() == {
            "exact": False,
            "flash_attn": False,
            "speculation": speculation,
            "memory": memory,
        }
        assert lm.model.n_swa == (WINDOW if kind == "gemma2" else 0)
        assert lm.model.recurrent == (kind == "mamba2")
        assert lm.model.hybrid == (kind == "lfm2")
    finally:
        lm.close()
