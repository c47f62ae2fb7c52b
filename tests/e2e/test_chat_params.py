"""The full chat parameter set over real HTTP: logprobs, echo, logit_bias, structured output."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "job": {"enum": ["baker", "pilot", "teacher", "doctor"]},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "job", "city"],
    "additionalProperties": False,
}
ASKS = [
    "Describe a person as JSON.",
    "Give me a fictional character.",
    "Who lives in Paris? Answer in JSON.",
    "Make up a customer record.",
    "Tell me about your best friend.",
]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def test_chat_logprobs_openai_shape(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert c.logprob <= 0
        assert len(c.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert c.top_logprobs[0].token == c.token
        assert bytes(c.bytes).decode() == c.token


def test_chat_logprobs_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=6,
            temperature=0,
            logprobs=True,
            stream=True,
        )
    )
    entries = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(e.token for e in entries) == text
    assert all(e.logprob <= 0 for e in entries)


def test_chat_logprobs_together_form(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": 0,
    }
    lp = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) > 0
    assert all(x <= 0 for x in lp["token_logprobs"])


def test_echo_scores_match_greedy_generation(client: openai.OpenAI) -> None:
    """Scoring prompt+completion with echo and max_tokens=0 gives the generation's logprobs."""
    prompt = "The capital of France is"
    gen = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=2
    ).choices[0]
    scored = client.completions.create(
        model=MODEL, prompt=prompt + gen.text, max_tokens=0, echo=True, logprobs=2
    ).choices[0]
    assert scored.text == prompt + gen.text
    assert scored.logprobs.token_logprobs[0] is None
    assert scored.logprobs.tokens[-8:] == gen.logprobs.tokens
    for a, b in zip(scored.logprobs.token_logprobs[-8:], gen.logprobs.token_logprobs, strict=True):
        assert a <= 0
        # Prefill scores a chunk at once, generation one token at a time: close, not bit-equal
        # (within 0.15 on AVX-512 machines, 0.2 seen on AVX2 ones).
        assert math.isclose(a, b, abs_tol=0.3), (a, b)
    offsets = scored.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_echo_without_logprobs_and_chat_echo(client: openai.OpenAI, http: httpx.Client) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=3, echo=True, temperature=0
    )
    assert r.choices[0].text.startswith("Hello")
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "echo": True}
    out = http.post("/v1/chat/completions", json=body).json()
    assert "<|im_start|>user\nHi<|im_end|>" in out["prompt"][0]["text"]


def test_logit_bias_bans_and_forces(client: openai.OpenAI, http: httpx.Client) -> None:
    prompt = "Q: The capital of France is?\nA:"
    base = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=0
    )
    paris = http.post("/tokenize", json={"content": " Paris"}).json()["tokens"]
    assert base.choices[0].text == " Paris" and len(paris) == 1
    banned = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(paris[0]): -100}
    )
    assert banned.choices[0].text != " Paris"
    forced = client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=5,
        temperature=1.0,
        seed=3,
        logit_bias={str(paris[0]): 100},
    )
    assert forced.choices[0].text == " Paris" * 5


@pytest.mark.parametrize("form", ["json_schema", "together", "json_object"])
def test_structured_output_always_validates(http: httpx.Client, form: str) -> None:
    """Whatever the model writes under a grammar parses and validates once it stops."""
    formats = {
        "json_schema": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
        "together": {"type": "json", "schema": PERSON},
        "json_object": {"type": "json_object"},
    }
    stopped = 0
    for i, ask in enumerate(ASKS):
        body = {
            "messages": [{"role": "user", "content": ask}],
            "max_tokens": 400,
            "temperature": 0.3,
            "seed": i,
            "response_format": formats[form],
        }
        choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
        if choice["finish_reason"] != "stop":
            # An unbounded JSON object may outrun max_tokens; a bounded schema never does.
            assert form == "json_object", choice
            continue
        stopped += 1
        value = json.loads(choice["message"]["content"])
        if form == "json_object":
            assert isinstance(value, dict)
        else:
            jsonschema.validate(value, PERSON)
    # How many free-form objects close within max_tokens depends on the CPU's kernels (the
    # sampled text differs between AVX-512 and AVX2 machines); schemas always close.
    assert stopped >= (1 if form == "json_object" else 3)


def test_raw_grammar_extension(http: httpx.Client) -> None:
    body = {
        "prompt": "Is the sky blue?",
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 1,
        "grammar": 'root ::= " yes" | " no"',
    }
    for seed in range(4):
        text = http.post("/v1/completions", json={**body, "seed": seed}).json()["choices"][0]
        assert text["text"] in (" yes", " no")


def test_estimated_cost(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    u = r.usage.model_dump()
    expected = (u["prompt_tokens"] * 1.5 + u["completion_tokens"] * 2) / 1e6
    assert math.isclose(u["estimated_cost"], expected)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"$ref": "#/definitions/nope"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        (
            {"response_format": {"type": "json", "schema": {"type": "integer", "minimum": 3}}},
            "response_format",
        ),
        ({"grammar": "root ::= missing"}, "grammar"),
    ],
)
def test_bad_parameters_are_400(http: httpx.Client, extra: dict, param: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
