"""Small rules of the Ollama and llama-server dialects that need no model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from daemon.api.dispatch import is_ollama
from daemon.api.llamacpp.protocol import CompletionRequest
from daemon.api.ollama.catalog import pull_target
from daemon.api.ollama.protocol import Options
from daemon.core.sampling import LLAMA_CPP, sampling_of
from daemon.errors import InvalidRequest


@pytest.mark.parametrize(
    ("body", "ollama"),
    [
        ({"model": "m", "prompt": "x"}, True),
        ({}, True),
        ({"request_id": "a", "prompt": "x"}, False),
        ({"prompt": "x", "generation_config": {}}, False),
        ({"prompt": "x", "stream_response": False}, False),
        ({"prompt": "x", "only_new_tokens": True}, False),
        ([1, 2], False),
        (None, False),
    ],
)
def test_generate_dispatch_rule(body: object, ollama: bool) -> None:
    assert is_ollama(body) is ollama


def test_options_take_ollamas_defaults_and_windows() -> None:
    s = sampling_of(Options(), LLAMA_CPP, n_ctx=512).params
    assert (s.temperature, s.top_k, s.top_p, s.repetition_penalty) == (0.8, 40, 0.9, 1.1)
    assert s.penalty_last_n == 64 and s.seed is None
    s = sampling_of(Options(repeat_last_n=-1, seed=-1), LLAMA_CPP, n_ctx=512).params
    assert s.penalty_last_n == 512 and s.seed is None
    opts = Options(seed=7, num_gpu=99)  # type: ignore[call-arg]
    assert sampling_of(opts, LLAMA_CPP, n_ctx=64).params.seed == 7
    with pytest.raises(ValidationError):
        Options(mirostat=2)  # type: ignore[arg-type]


def test_pull_target() -> None:
    assert pull_target("hf.co/a/b:Q8_0") == ("a/b", "Q8_0")
    assert pull_target("a/b") == ("a/b", "Q4_K_M")
    assert pull_target("a/b:latest") == ("a/b", "Q4_K_M")
    for bad in ("ab", "a/b/c", "/b", "a/"):
        with pytest.raises(InvalidRequest):
            pull_target(bad)


def test_completion_refuses_what_it_cannot_honour() -> None:
    for field, value in [("mirostat", 1), ("n_keep", 5)]:
        with pytest.raises(ValidationError, match=field):
            CompletionRequest(prompt="x", **{field: value})
    req = CompletionRequest(prompt="x", logit_bias=[[5, False], ["7", 2.5]], ignore_eos=True)
    bias = req.bias_map(frozenset({0}), lambda text: [ord(c) for c in text])
    assert bias == {"5": -100.0, "7": 2.5, "0": -100.0}
    # A text key biases each of its tokens; a digit key is a token id, in either form.
    texts = CompletionRequest(prompt="x", logit_bias={" ab": -3, "9": 1.5, "²": False})
    assert texts.bias_map(frozenset(), lambda text: [ord(c) for c in text]) == {
        "32": -3.0,
        "97": -3.0,
        "98": -3.0,
        "9": 1.5,
        str(ord("²")): -100.0,  # not an ASCII digit: a text, never int("²")
    }
    for bad in ([[-1, 1]], [["", 1]], [["x" * 257, 1]], [[True, 1]], [["a", 101]]):
        with pytest.raises(ValidationError):
            CompletionRequest(prompt="x", logit_bias=bad)
