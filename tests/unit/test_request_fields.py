"""Request-field validation that needs no model: logit_bias, legacy functions, settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from daemon.api.fields import SamplingFields
from daemon.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from daemon.config import Settings
from daemon.core.sampling import OPENAI, sampling_of
from daemon.errors import InvalidRequest


@pytest.mark.parametrize(
    "bias",
    [{"²": 1}, {"٣": 1}, {"5": 1, "05": 1}, {"5": 1, " 5 ": 1}, {"+5": 1}, {"5.0": 1}, {"": 1}],
)
def test_logit_bias_keys_must_be_distinct_ascii_token_ids(bias: dict[str, float]) -> None:
    with pytest.raises(ValidationError) as exc:
        SamplingFields(logit_bias=bias)
    assert exc.value.errors()[0]["loc"][0] == "logit_bias"


def test_logit_bias_is_normalized_and_capped() -> None:
    f = SamplingFields(logit_bias={" 07": -100, "12": 100})
    assert sampling_of(f, OPENAI).params.logit_bias == ((7, -100.0), (12, 100.0))
    SamplingFields(logit_bias={str(i): 1 for i in range(300)})
    with pytest.raises(ValidationError):
        SamplingFields(logit_bias={str(i): 1 for i in range(301)})


def test_legacy_functions_become_one_named_tool() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "functions": [{"name": "f", "parameters": {"type": "object"}}],
            "function_call": {"name": "f"},
        }
    ).with_legacy_functions()
    assert req.tools is not None and req.tools[0].function.name == "f"
    assert req.tool_choice is not None and not isinstance(req.tool_choice, str)
    assert req.tool_choice.function.name == "f" and req.parallel_tool_calls is False


@pytest.mark.parametrize(
    "body", [{"best_of": 2, "stream": True}, {"best_of": 1, "n": 2}, {"suffix": "x"}]
)
def test_completion_fields_that_would_change_the_answer_are_refused(body: dict) -> None:
    req = CompletionRequest.model_validate({"prompt": "hi", **body})
    with pytest.raises(InvalidRequest) as exc:
        req.check_unsupported()
    assert exc.value.param in body


def test_best_of_generates_more_candidates() -> None:
    req = CompletionRequest.model_validate({"prompt": "hi", "n": 2, "best_of": 5, "suffix": ""})
    req.check_unsupported()
    assert req.candidates == 5


def test_batch_must_hold_a_token_of_every_slot() -> None:
    with pytest.raises(ValidationError, match="batch_size"):
        Settings(parallel=8, batch_size=4)
    assert Settings(parallel=8, batch_size=8).batch_size == 8
