"""The families' markers are control tokens in their own vocabularies; detokenization renders
them (the parsers read them) and still renders every other control token as nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.decode.detokenize import FAMILY_MARKERS, IncrementalDetokenizer
from daemon.engine.native.llama import Model
from tests.families.markers import KEPT, RENAMED, make_marker_gguf


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, smollm_gguf: Path) -> Iterator[Model]:
    path = make_marker_gguf(smollm_gguf, tmp_path_factory.mktemp("markers") / "m.gguf")
    m = Model(path)
    yield m
    m.close()


def test_markers_are_single_control_tokens(model: Model) -> None:
    for token, text in RENAMED.items():
        assert model.tokenize(text, add_special=False) == [token]
        assert model.special_piece(token) == text.encode()
        # A control token: plain rendering drops it. llama.cpp itself turns harmony's
        # `<|channel|>`, `<|message|>`, `<|start|>` and `<|constrain|>` into user-defined
        # tokens whatever the GGUF says, so those already render.
        harmony = text in ("<|channel|>", "<|message|>")
        assert model.piece(token) == (text.encode() if harmony else b"")


def test_detokenizer_renders_family_markers_only(model: Model) -> None:
    text = '<|python_tag|>{"name": "f"}<repo_name>[TOOL_CALLS]<|im_start|><|START_ACTION|>x'
    tokens = model.tokenize(text, add_special=False)
    assert KEPT in tokens and 1 in tokens  # <repo_name> and <|im_start|>: other control tokens
    detok = IncrementalDetokenizer(model.piece)
    out = "".join(detok.push(t) for t in tokens) + detok.flush()
    assert out == '<|python_tag|>{"name": "f"}[TOOL_CALLS]<|START_ACTION|>x'
    assert all(m in FAMILY_MARKERS for m in RENAMED.values())
