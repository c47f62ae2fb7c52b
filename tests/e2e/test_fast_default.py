"""Fast by default, exact on request (issue 26): what each contract reuses, over real HTTP.

Without `--exact` a returning turn reuses the KV of the previous reply's generated tokens
(in its slot, and from the prompt cache once the slot was taken), as llama-server does;
under `--exact` only KV computed in multi-token chunks is reused, so the reply is prefilled
again. /props and /admin/ps say which contract a model runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from daemon.engine.native.llama import Model
from tests.conftest import Server, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct.Q4_1"
REPLY = 24
# A system prompt of a few hundred tokens: long enough for the prompt cache (64-token blocks).
SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer the question about item {i} in plain words." for i in range(20)
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One slot each, so that any other request takes the conversation's slot."""
    args = ("--threads", "1", "--parallel", "1", "--ctx-size", "1024", "--strict-model-names")
    fast = start_server(tmp_path_factory.mktemp("fast"), *args)
    exact = start_server(tmp_path_factory.mktemp("exact"), *args, "--exact")
    yield {"fast": fast, "exact": exact}
    stop_server(fast)
    stop_server(exact)


@pytest.fixture(scope="module")
def no_end(smollm_gguf: Path) -> dict[str, int]:
    """logit_bias banning the end-of-generation tokens: replies run to max_tokens."""
    model = Model(smollm_gguf)
    try:
        return {str(t): -100 for t in model.eog_tokens}
    finally:
        model.close()


def chat(srv: Server, messages: list[dict[str, str]], max_tokens: int, bias: Any = None) -> Any:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="k", max_retries=0, timeout=600)
    return client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        logit_bias=bias,
    )


def cached(resp: Any) -> int:
    return int(resp.usage.prompt_tokens_details.cached_tokens)


def test_props_and_ps_name_the_contract(servers: dict[str, Server]) -> None:
    for name, want in (("fast", (False, True)), ("exact", (True, False))):
        props = httpx.get(f"{servers[name].url}/props", timeout=60).json()["decoding"]
        assert (props["exact"], props["flash_attn"]) == want
        ps = httpx.get(f"{servers[name].url}/admin/ps", timeout=60).json()["models"]
        assert ps[0]["decoding"] == props
    spec = {
        n: httpx.get(f"{s.url}/props", timeout=60).json()["decoding"]["speculation"]
        for n, s in servers.items()
    }
    assert spec == {"fast": "off", "exact": "off"}  # off unless --speculate (config.py)


def turns(srv: Server, question: str, evict: bool, bias: dict[str, int]) -> tuple[int, int, int]:
    """Turn one, then (after another conversation took the slot, if `evict`) turn two with
    the reply in its history: (turn one's prompt tokens, reply tokens, turn two's cached)."""
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    one = chat(srv, first, REPLY, bias)
    reply = one.choices[0].message.content
    if evict:
        other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
        chat(srv, other, 2)
    two = chat(
        srv,
        [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "More."}],
        2,
    )
    return one.usage.prompt_tokens, one.usage.completion_tokens, cached(two)


@pytest.mark.parametrize("evict", [False, True], ids=["slot", "prompt-cache"])
def test_a_returning_turn_reuses_the_reply_only_by_default(
    servers: dict[str, Server], evict: bool, no_end: dict[str, int]
) -> None:
    tag = "evicted" if evict else "kept"
    q = f"Describe item 7 ({tag})."
    p_fast, r_fast, c_fast = turns(servers["fast"], q, evict, no_end)
    p_exact, r_exact, c_exact = turns(servers["exact"], q, evict, no_end)
    assert (p_fast, r_fast) == (p_exact, r_exact) and r_fast == REPLY
    # --exact: the reply's one-row KV is prefilled again; at most turn one's prompt is kept
    # (the prompt cache keeps whole 64-token blocks of it).
    assert c_exact <= p_exact
    # Fast: the reply's KV is reused too (its last tokens may tokenize differently inside
    # the template's turn, so a few are allowed to be prefilled again).
    assert c_fast >= p_fast + REPLY - 4, (c_fast, p_fast)


def test_exact_mode_with_a_quantized_value_cache_is_refused(tmp_path: Path) -> None:
    """A quantized V cache needs flash attention: fine by default, refused at start under
    --exact (which turns it off) unless --flash-attn is given."""
    srv = start_server(tmp_path, "--exact", "--cache-type-v", "q8_0", wait=False)
    assert srv.proc.wait(120) == 2
    assert "flash_attn" in srv.log.read_text()
