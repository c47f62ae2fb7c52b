"""Images on an M-RoPE model (Qwen2-VL's positions): an image of nx × ny tokens fills nx·ny
KV cells but advances the sequence by max(nx, ny) positions, so every path that puts cells
into a slot or cuts them must map an index to its position (daemon/engine/positions.py).

Each answer is held against libmtmd's own eval_chunks followed by a plain greedy loop,
computed in-process on the same machine: a fresh prompt, two images, a returning turn from
the slot, a returning turn from the prompt cache, n = 2, and another key whose share of the
cached prefix ends inside the image."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.media import Medium, is_stand_in
from daemon.engine.native.mtmd import ChunkType
from daemon.engine.positions import Jump, before, position, whole
from daemon.engine.types import GenerationRequest, SamplingParams
from tests.conftest import Server
from tests.media.inprocess import cut_second_rows, qwen_engine, run
from tests.media.reference import chunk_sizes, flat, image_turn, reference_greedy
from tests.media.test_image_prompt_eval import hand_fed_equals_libmtmd
from tests.media.tiny_vlm import png_bytes, sample_image

STEPS = 8
GREEDY = SamplingParams(temperature=0.0)
SHARE = 40  # the qwen_server's --cache-share-tokens
QUESTION = "What is in this picture?"
IMAGE = png_bytes(sample_image(size=48, seed=3))  # 6 × 6 tokens, 6 positions
WIDE = png_bytes(sample_image(size=64, seed=4)[:32].copy())  # 8 × 4 tokens, 8 positions


def _ask(image: bytes, text: str = QUESTION) -> dict:
    return image_turn(image, text)


def _client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


Expected = tuple[str, list[float]]


@pytest.fixture(scope="module")
def expect(qwen_lm_path: Path, qwen_mmproj: Path, qwen_server: Server):  # type: ignore[no-untyped-def]
    """The reference of a chat: the text of the greedy tokens after libmtmd's eval_chunks
    (detokenized by the daemon) and each token's log-probability."""

    def reference(messages: list[dict], media: list[bytes]) -> Expected:
        want, logprobs = reference_greedy(qwen_lm_path, qwen_mmproj, flat(messages), media, STEPS)
        assert want, "the reference generated nothing to compare"
        client = _client(qwen_server, "q0")
        raw = client.post("/detokenize", body={"tokens": want}, cast_to=object)
        return str(raw["content"]), logprobs  # type: ignore[index]

    return reference


def _chat(client: openai.OpenAI, messages: list[dict], n: int = 1, max_tokens: int = STEPS):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model="qwen",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        n=n,
        logprobs=True,
    )


def _matches(choice, want: Expected) -> None:  # type: ignore[no-untyped-def]
    """The choice's text is the reference's and so are its log-probabilities: a position
    off by any amount moves them even where the greedy token survives it."""
    text, logprobs = want
    assert choice.message.content == text
    got = [t.logprob for t in choice.logprobs.content]
    assert len(got) == len(logprobs)
    assert np.abs(np.array(got) - np.array(logprobs)).max() < 1e-3, (got, logprobs)


def _cached(resp) -> int:  # type: ignore[no-untyped-def]
    details = resp.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details else 0


# ---- the position map ----------------------------------------------------------------


@st.composite
def _jumps(draw: st.DrawFn) -> tuple[Jump, ...]:
    out, at = [], draw(st.integers(0, 5))
    for _ in range(draw(st.integers(0, 4))):
        cells = draw(st.integers(1, 40))
        out.append(Jump(at, cells, draw(st.integers(1, cells))))
        at += cells + draw(st.integers(0, 6))
    return tuple(out)


@given(_jumps(), st.integers(0, 250))
def test_the_position_map(jumps: tuple[Jump, ...], index: int) -> None:
    """Positions never go back; an image's cells share its first position; what follows an
    image sits `advance` past it; a cut never splits an image and keeps its jumps."""
    end = max((j.end for j in jumps), default=0) + 5
    positions = [position(jumps, i) for i in range(end)]
    assert all(a <= b for a, b in itertools.pairwise(positions))
    for j in jumps:
        assert set(positions[j.start : j.end]) == {positions[j.start]}
        assert position(jumps, j.end) == positions[j.start] + j.advance
    assert position((), index) == index
    keep = whole(jumps, index)
    assert keep <= index
    assert not any(j.start < keep < j.end for j in jumps)
    assert before(jumps, keep) == tuple(j for j in jumps if j.end <= keep)


# ---- in process ----------------------------------------------------------------------


def test_hand_fed_embeddings_equal_libmtmds_evaluation(
    qwen_lm_path: Path, qwen_mmproj: Path
) -> None:
    """The scheduler's path (embedding batches at M-RoPE positions, text after the image at
    its position, not its index) gives libmtmd's own logits."""
    assert hand_fed_equals_libmtmd(qwen_lm_path, qwen_mmproj, WIDE) == (32, 8, False)


@pytest.fixture
def engine(qwen_lm_path: Path, qwen_mmproj: Path) -> Iterator[LoadedModel]:
    """The M-RoPE model in process, with batches of 8 rows."""
    lm = qwen_engine(qwen_lm_path, qwen_mmproj)
    yield lm
    lm.close()


@pytest.mark.parametrize("how", ["hang-up", "failure"])
def test_an_image_cut_short_part_way(
    engine: LoadedModel,
    qwen_lm_path: Path,
    qwen_mmproj: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """The client hangs up, or the decode fails, while the image's second batch of rows is
    decoded: the slot holds part of an image whose cells share one position. The same
    request again goes on from the rows the slot holds (or from nothing, after a failure)
    and answers as libmtmd's evaluation does."""
    messages = flat([_ask(IMAGE)])
    want, _ = reference_greedy(qwen_lm_path, qwen_mmproj, messages, [IMAGE], STEPS)
    medium = Medium(IMAGE, hashlib.sha256(IMAGE).hexdigest())

    def request() -> GenerationRequest:
        tokens, media = engine.media_prompt(engine.render_chat(messages), [medium])
        return GenerationRequest(tokens, STEPS, GREEDY, media=media)

    first = request()
    start = next(i for i, t in enumerate(first.prompt_tokens) if is_stand_in(t))
    calls = cut_second_rows(monkeypatch, engine, fail=how == "failure")
    if how == "failure":
        with pytest.raises(Exception, match="injected"):
            run(engine, first)
    else:
        assert run(engine, first)[0] == []
    assert calls[:2] == [8, 8]
    monkeypatch.undo()
    got, h = run(engine, request())
    cached = h.usage.cached_tokens
    # A hang-up leaves the image's first 16 rows, which the request goes on from; a failure
    # drops all the slot held (its KV may be half-updated).
    assert cached == (start + 16 if how == "hang-up" else 0)
    assert got == want


# ---- over HTTP -----------------------------------------------------------------------


def test_an_image_answers_as_libmtmd(qwen_server: Server, expect) -> None:  # type: ignore[no-untyped-def]
    messages = [_ask(IMAGE)]
    _matches(_chat(_client(qwen_server, "q1"), messages).choices[0], expect(messages, [IMAGE]))


def test_two_images_in_one_prompt(qwen_server: Server, expect) -> None:  # type: ignore[no-untyped-def]
    """Two jumps: the text between and after them at their positions."""
    one, two = image_turn(IMAGE, "and"), image_turn(WIDE, QUESTION)
    messages = [{"role": "user", "content": one["content"] + two["content"]}]
    resp = _chat(_client(qwen_server, "q2"), messages)
    _matches(resp.choices[0], expect(messages, [IMAGE, WIDE]))


def _turns(client: openai.OpenAI) -> tuple[list[dict], int]:
    """A first turn with the image, then the messages of the second; and the first turn's
    prompt size."""
    first = [_ask(IMAGE, "Describe it.")]
    one = _chat(client, first)
    assert one.usage is not None
    messages = [
        *first,
        {"role": "assistant", "content": one.choices[0].message.content or ""},
        {"role": "user", "content": "And the shapes?"},
    ]
    return messages, one.usage.prompt_tokens


def test_a_returning_turn_from_the_slot(qwen_server: Server, expect) -> None:  # type: ignore[no-untyped-def]
    """The slot's cells are cut after the image by position (behind the index) and the
    rest decoded at the positions that follow it."""
    client = _client(qwen_server, "q3")
    messages, first = _turns(client)
    two = _chat(client, messages)
    assert _cached(two) >= first - 8  # the image came from the slot
    _matches(two.choices[0], expect(messages, [IMAGE]))


def test_a_returning_turn_from_the_prompt_cache(qwen_server: Server, expect) -> None:  # type: ignore[no-untyped-def]
    """Both slots taken by other conversations in between: the first turn, image included,
    comes back from the prompt cache with its positions."""
    client = _client(qwen_server, "q4")
    messages, first = _turns(client)

    def fill(i: int) -> None:  # at once, so that each takes a slot of its own
        filler = f"{i} " + "Tell me about the weather in spring and autumn. " * 12
        _chat(client, [{"role": "user", "content": filler}], max_tokens=24)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(fill, range(2)))
    two = _chat(client, messages)
    assert _cached(two) >= first - 8
    _matches(two.choices[0], expect(messages, [IMAGE]))


def test_n_choices_each_answer_as_libmtmd(qwen_server: Server, expect) -> None:  # type: ignore[no-untyped-def]
    """The second choice continues from a copy of the first's cells and their jumps."""
    messages = [_ask(WIDE)]
    resp = _chat(_client(qwen_server, "q5"), messages, n=2)
    want = expect(messages, [WIDE])
    assert len(resp.choices) == 2
    for choice in resp.choices:
        _matches(choice, want)


def test_another_keys_share_ending_inside_the_image(
    qwen_server: Server, qwen_lm_path: Path, qwen_mmproj: Path, expect
) -> None:  # type: ignore[no-untyped-def]
    """Key q7 may reuse SHARE leading tokens of q6's prompt, a cut inside the image: the
    whole image is decoded again, not its tail at its first cells' position."""
    messages = [_ask(IMAGE)]
    sizes = chunk_sizes(qwen_lm_path, qwen_mmproj, flat(messages), [IMAGE])
    start = sizes[0][1]
    assert sizes[1] == (ChunkType.IMAGE, 36) and start < SHARE < start + 36, sizes
    one = _chat(_client(qwen_server, "q6"), messages)
    two = _chat(_client(qwen_server, "q7"), messages)
    assert _cached(two) <= start
    want = expect(messages, [IMAGE])
    _matches(one.choices[0], want)
    _matches(two.choices[0], want)
