"""Images on `/api/generate`, the request_id dialect: a generation whose prompt held an image
continues from its kept KV state, exactly, on a SmolVLM projector and on an M-RoPE one
(whose kept state carries the image's place in positions: daemon/engine/positions.py).

Each answer is held against libmtmd's own eval_chunks of the raw prompt followed by a plain
greedy loop, computed in-process on the same machine (tests/media/reference.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule, run_state_machine_as_test

from daemon.core.request import MEDIA_MARKER
from daemon.engine.caches.cache import SequenceStore, read_entry, write_entry
from daemon.engine.errors import InvalidInput, ModelUnavailable
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.media import Medium, is_stand_in
from daemon.engine.positions import Jump
from daemon.engine.types import BeamParams, GenerationRequest, SamplingParams, SavedSequence
from tests.conftest import Server
from tests.media.conftest import CTX, PARALLEL
from tests.media.inprocess import cut_second_rows, qwen_engine, run
from tests.media.reference import reference_raw
from tests.media.tiny_vlm import png_bytes, sample_image

STEPS = 8
HALF = STEPS // 2
GREEDY = {"do_sample": False, "repetition_penalty": 1.0}
GREEDY_PARAMS = SamplingParams(temperature=0.0)
IMAGE = png_bytes(sample_image(size=48, seed=3))
B64 = base64.b64encode(IMAGE).decode()
PROMPT = f"Here is a picture: {MEDIA_MARKER}\nA short story about it:\n"


@pytest.fixture(params=["smolvlm", "qwen2vl"])
def model(request: pytest.FixtureRequest) -> tuple[Server, Path, Path]:
    """A daemon with a projector (SmolVLM's, or M-RoPE's behind keys), and its files."""
    if request.param == "smolvlm":
        names = ("vlm_server", "vlm_lm_path", "mmproj")
    else:
        names = ("qwen_server", "qwen_lm_path", "qwen_mmproj")
    srv, lm, proj = (request.getfixturevalue(n) for n in names)
    return srv, lm, proj["f32"] if isinstance(proj, dict) else proj


def _headers(key: str) -> dict[str, str]:
    """Keys q8 and q9 are the qwen_server's that no other module uses; "" for a daemon
    without keys (the vlm_server)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _generate(srv: Server, key: str, **body: Any) -> httpx.Response:
    body.setdefault("stream_response", False)
    cfg = {**GREEDY, **body.pop("generation_config", {})}
    return httpx.post(
        f"{srv.url}/api/generate",
        json={"generation_config": cfg, **body},
        headers=_headers(key),
        timeout=300,
    )


def _text(srv: Server, key: str, tokens: list[int]) -> str:
    r = httpx.post(
        f"{srv.url}/detokenize", json={"tokens": tokens}, headers=_headers(key), timeout=60
    )
    r.raise_for_status()
    return str(r.json()["content"])


def _fill_slots(srv: Server, key: str) -> None:
    """Both slots taken by other prompts at once: a continuation then restores its state."""

    def one(i: int) -> None:
        prompt = f"{i} " + "Tell me about the weather in spring and autumn. " * 10
        r = _generate(
            srv,
            key,
            request_id=f"filler-{i}",
            prompt=prompt,
            generation_config={"max_new_tokens": 16},
        )
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(one, range(PARALLEL)))


@pytest.mark.parametrize("between", ["nothing", "other prompts"])
def test_a_continuation_after_an_image_is_exact(
    model: tuple[Server, Path, Path], between: str
) -> None:
    """Two calls of HALF tokens under one request_id give the reference's STEPS tokens, from
    the slot that still holds the image or from the state the store kept (restored with the
    image's positions); the second call carries no prompt and no image."""
    srv, lm_path, proj = model
    key = "q8" if between == "nothing" else "q9"
    rid = f"img-{between}"
    want, _ = reference_raw(lm_path, proj, PROMPT, [IMAGE], STEPS)
    assert len(want) == STEPS, "the reference ended early: nothing to continue"
    one = _generate(
        srv,
        key,
        request_id=rid,
        prompt=PROMPT,
        images=[B64],
        generation_config={"max_new_tokens": HALF},
    )
    assert one.status_code == 200, one.text
    if between == "other prompts":
        _fill_slots(srv, key)
    two = _generate(
        srv, key, request_id=rid, only_new_tokens=False, generation_config={"max_new_tokens": HALF}
    )
    assert two.status_code == 200, two.text
    assert one.text == _text(srv, key, want[:HALF])
    # The whole sequence shows the image where it was: a marker for each of libmtmd's
    # chunks of it (SmolVLM's are a tile and the whole image), amid its framing tokens.
    assert two.text.endswith(_text(srv, key, want))
    before, after = two.text.split(MEDIA_MARKER, 1)
    assert before.startswith("Here is a picture: ")
    assert after.rsplit(MEDIA_MARKER, 1)[-1].find("\nA short story about it:\n") >= 0


def test_images_without_a_marker_go_before_the_text(
    vlm_server: Server, vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    """Ollama's habit: images and no marker. They open the prompt, as if it began with one
    marker per image; streamed, the text is the same."""
    text = PROMPT.replace(MEDIA_MARKER, "")
    want, _ = reference_raw(vlm_lm_path, mmproj["f32"], MEDIA_MARKER + text, [IMAGE], HALF)
    assert want, "the reference generated nothing to compare"
    body = {"prompt": text, "images": [B64], "generation_config": {"max_new_tokens": HALF}}
    whole = _generate(vlm_server, "", request_id="no-marker", **body)
    streamed = _generate(vlm_server, "", request_id="no-marker-2", stream_response=True, **body)
    assert whole.status_code == streamed.status_code == 200
    assert whole.text == streamed.text == _text(vlm_server, "", want)


def test_the_batch_route_takes_images_per_prompt(
    vlm_server: Server, vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    """One prompt with the image, one without, decoded together; each continues later."""
    want, _ = reference_raw(vlm_lm_path, mmproj["f32"], PROMPT, [IMAGE], STEPS)
    prompts = [
        {"request_id": "b-img", "prompt": PROMPT, "images": [B64]},
        {"request_id": "b-text", "prompt": "The capital of France is"},
    ]
    cfg = {**GREEDY, "max_new_tokens": HALF}
    r = httpx.post(
        f"{vlm_server.url}/api/generate-batch",
        json={"prompts": prompts, "generation_config": cfg},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["response"] == _text(vlm_server, "", want[:HALF])
    two = _generate(vlm_server, "", request_id="b-img", generation_config={"max_new_tokens": HALF})
    assert r.json()[0]["response"] + two.text == _text(vlm_server, "", want)


def test_a_batch_counts_its_images_together(vlm_server: Server) -> None:
    """--max-images (8) bounds the request: five prompts of two images each are a 400
    before any is decoded, and none of their ids keeps anything."""
    prompts = [
        {"request_id": f"many-{i}", "prompt": PROMPT * 2, "images": [B64] * 2} for i in range(5)
    ]
    r = httpx.post(
        f"{vlm_server.url}/api/generate-batch",
        json={"prompts": prompts, "generation_config": {**GREEDY, "max_new_tokens": 1}},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "images"
    again = _generate(vlm_server, "", request_id="many-0")
    assert again.status_code == 400 and "nothing is kept" in again.text


def test_another_key_cannot_continue_it(qwen_server: Server) -> None:
    """The kept state belongs to the key that made it: q9's id means nothing to q8."""
    one = _generate(
        qwen_server,
        "q9",
        request_id="mine",
        prompt=PROMPT,
        images=[B64],
        generation_config={"max_new_tokens": 2},
    )
    assert one.status_code == 200, one.text
    r = _generate(qwen_server, "q8", request_id="mine", generation_config={"max_new_tokens": 2})
    assert r.status_code == 400 and "nothing is kept" in r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"images": ["not base64!"]}, "images"),
        ({"images": [base64.b64encode(IMAGE[:40]).decode()]}, "images"),
        ({"images": [base64.b64encode(b"GIF89a" + bytes(20)).decode()]}, "images"),
        ({"images": [B64] * 9}, "images"),
        ({"images": [B64], "prompt": PROMPT + MEDIA_MARKER}, "prompt"),
        ({"images": [B64], "generation_config": {"num_beams": 2}}, "generation_config.num_beams"),
        ({"images": [""]}, "images"),
        ({"images": [B64], "prompt": None}, "prompt"),
    ],
)
def test_bad_images_are_400s_that_keep_nothing(
    vlm_server: Server, body: dict[str, Any], param: str
) -> None:
    """Every refusal is the dialect's 400 naming the field, and leaves the id free and
    empty: a call without a prompt then finds nothing kept."""
    rid = f"bad-{hashlib.sha256(repr(body).encode()).hexdigest()[:8]}"
    full = {"prompt": PROMPT, **body}
    r = _generate(vlm_server, "", request_id=rid, **full)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    again = _generate(vlm_server, "", request_id=rid)
    assert again.status_code == 400 and "nothing is kept" in again.text


def test_a_model_without_a_projector_says_so(text_server: Server) -> None:
    r = _generate(text_server, "", request_id="blind", prompt=PROMPT, images=[B64])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "images"
    assert "--mmproj" in r.json()["error"]["message"]


# ---- in process ----------------------------------------------------------------------


@pytest.fixture
def engine(qwen_lm_path: Path, qwen_mmproj: Path) -> Iterator[LoadedModel]:
    """The M-RoPE model in process, with batches of 8 rows."""
    lm = qwen_engine(qwen_lm_path, qwen_mmproj)
    yield lm
    lm.close()


def _request(lm: LoadedModel, steps: int, **kw: Any) -> GenerationRequest:
    medium = Medium(IMAGE, hashlib.sha256(IMAGE).hexdigest())
    tokens, media = lm.media_prompt(PROMPT, [medium])
    return GenerationRequest(tokens, steps, GREEDY_PARAMS, media=media, keep=True, **kw)


def _run_both(lm: LoadedModel, reqs: list[GenerationRequest]) -> None:
    """Requests at once, each in a slot of its own."""

    async def main() -> None:
        handles = [lm.submit(r) for r in reqs]
        for h in handles:
            async for _ in h.chunks():
                pass

    asyncio.run(main())


def test_a_kept_sequence_carries_its_image_and_jumps(
    engine: LoadedModel, qwen_lm_path: Path, qwen_mmproj: Path, tmp_path: Path
) -> None:
    """What the store keeps names the image's cells and positions, survives a spill file,
    and continues exactly; a restore that fails is a retryable refusal (the image's
    embeddings are not kept, so its positions cannot be decoded again) that keeps it."""
    want, _ = reference_raw(qwen_lm_path, qwen_mmproj, PROMPT, [IMAGE], STEPS)
    first, h = run(engine, _request(engine, HALF))
    saved = h.saved
    assert first == want[:HALF] and saved is not None
    start = next(i for i, t in enumerate(saved.tokens) if is_stand_in(t))
    assert saved.jumps == (Jump(start, 36, 6),)
    write_entry(tmp_path / "e.seq", ("k", "id"), saved)
    assert read_entry(tmp_path / "e.seq", ("k", "id")) == saved
    # Another prompt takes the slot; then the state cannot be put back.
    _run_both(
        engine,
        [
            GenerationRequest(engine.tokenize(f"{i} Tell me a story. " * 20), 4, GREEDY_PARAMS)
            for i in range(PARALLEL)
        ],
    )
    ctx = engine.generator().ctx
    real = ctx.state_set
    ctx.state_set = lambda *a: False  # type: ignore[method-assign]
    try:
        with pytest.raises(ModelUnavailable, match="retry"):
            run(engine, GenerationRequest([], HALF, GREEDY_PARAMS, resume=saved, keep=True))
    finally:
        ctx.state_set = real  # type: ignore[method-assign]
    # Beams read the history's token ids, which the image's positions have none of.
    with pytest.raises(InvalidInput, match="beam search"):
        run(engine, GenerationRequest([], 2, GREEDY_PARAMS, resume=saved, beams=BeamParams(2)))
    rest, _ = run(engine, GenerationRequest([], HALF, GREEDY_PARAMS, resume=saved, keep=True))
    assert first + rest == want


def test_a_generation_cut_before_its_image_was_decoded_keeps_nothing(
    engine: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client hangs up while the image's rows are decoded: nothing could feed the rest
    of them later, so nothing is kept (the id's old entry stays)."""
    calls = cut_second_rows(monkeypatch, engine, fail=False)
    tokens, h = run(engine, _request(engine, HALF))
    assert tokens == [] and calls[:2] == [8, 8]
    assert h.saved is None


def test_a_replaced_projector_never_lends_its_image_kv(
    vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    """A request_id kept under one projector file continues after --mmproj was replaced by
    another (its KV is its own history, computed by the same text model), but the image
    cells that continuation leaves in its slot are never taken for the new projector's view
    of the same image: a new request with the image encodes and decodes it again."""
    store = SequenceStore(64 << 20)
    opts = EngineOptions(ctx_size=CTX, parallel=1, threads=1, exact=True)
    old = LoadedModel("v", vlm_lm_path, opts, store=store, projector=mmproj["f32"])
    try:
        _, h = run(old, _request(old, HALF))
        saved = h.saved
    finally:
        old.close()
    assert saved is not None
    new = LoadedModel("v", vlm_lm_path, opts, store=store, projector=mmproj["f16"])
    try:
        rest, _ = run(new, GenerationRequest([], HALF, GREEDY_PARAMS, resume=saved, keep=True))
        assert rest  # the kept generation goes on, in the one slot
        req = _request(new, HALF)
        start = next(i for i, t in enumerate(req.prompt_tokens) if is_stand_in(t))
        assert not {t for t in req.prompt_tokens if is_stand_in(t)} & set(saved.tokens)
        _, h = run(new, req)
        assert h.usage.cached_tokens <= start
    finally:
        new.close()


def test_a_continuation_across_an_image_never_speculates(
    vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    """Under --speculate (always drafting): a draft model never saw the image, and the
    n-gram index would know its positions by stand-in ids only, so neither the first call
    nor its continuation drafts, and both answer as plain decoding does."""
    answers = []
    for speculate in (True, False):
        opts = EngineOptions(
            ctx_size=CTX,
            parallel=PARALLEL,
            threads=1,
            exact=False,
            flash_attn=True,
            speculate=speculate,
            speculate_always=speculate,
        )
        lm = LoadedModel("v", vlm_lm_path, opts, projector=mmproj["f32"])
        try:
            first, h = run(lm, _request(lm, HALF))
            assert h.saved is not None
            rest, _ = run(lm, GenerationRequest([], HALF, GREEDY_PARAMS, resume=h.saved))
            answers.append(first + rest)
            spec = lm.generator().spec
            if speculate:
                assert spec.disabled["media"] == 2 and sum(spec.drafted.values()) == 0
        finally:
            lm.close()
    assert answers[0] == answers[1] and len(answers[0]) == STEPS


# ---- many request_ids, images and text, slots crowded between calls --------------------

LIMIT = 20  # tokens an id generates at most (the references hold 24)
TEXT = "Here is a poem about the sea:\n"


@pytest.fixture(scope="module")
def kept_engine(qwen_lm_path: Path, qwen_mmproj: Path) -> Iterator[LoadedModel]:
    """The M-RoPE model in process, once for the property test."""
    lm = qwen_engine(qwen_lm_path, qwen_mmproj)
    yield lm
    lm.close()


def test_kept_sequences_across_images_stay_exact(
    kept_engine: LoadedModel, qwen_lm_path: Path, qwen_mmproj: Path
) -> None:
    """A stateful property test: ids started from an image prompt or a text prompt,
    continued by any number of calls of 1 to 4 tokens, with other prompts crowding both
    slots between calls and restores of kept state that fail: every call's tokens are the
    next ones of its prompt's one-go greedy reference, and a failed restore of an image
    sequence refuses (retryable) and keeps the entry as it was."""
    lm = kept_engine
    want = {
        True: reference_raw(qwen_lm_path, qwen_mmproj, PROMPT, [IMAGE], LIMIT + 4)[0],
        False: reference_raw(qwen_lm_path, qwen_mmproj, TEXT, [], LIMIT + 4)[0],
    }
    assert all(len(w) == LIMIT + 4 for w in want.values())
    medium = Medium(IMAGE, hashlib.sha256(IMAGE).hexdigest())

    class KeptIds(RuleBasedStateMachine):
        ids = Bundle("ids")

        def __init__(self) -> None:
            super().__init__()
            self.kept: dict[int, tuple[bool, int, SavedSequence]] = {}

        @rule(target=ids, image=st.booleans(), n=st.integers(1, 4))
        def start(self, image: bool, n: int) -> int:
            if image:
                tokens, media = lm.media_prompt(PROMPT, [medium])
            else:
                tokens, media = lm.tokenize(TEXT), None
            got, h = run(lm, GenerationRequest(tokens, n, GREEDY_PARAMS, media=media, keep=True))
            assert got == want[image][:n] and h.saved is not None
            key = len(self.kept)
            self.kept[key] = (image, n, h.saved)
            return key

        @rule(key=ids, n=st.integers(1, 4))
        def carry_on(self, key: int, n: int) -> None:
            image, count, saved = self.kept[key]
            n = min(n, LIMIT - count)
            if n <= 0:
                return
            got, h = run(lm, GenerationRequest([], n, GREEDY_PARAMS, resume=saved, keep=True))
            assert got == want[image][count : count + n]
            assert h.saved is not None
            self.kept[key] = (image, count + n, h.saved)

        @rule(seed=st.integers(0, 9))
        def crowd(self, seed: int) -> None:
            prompts = [f"{seed} {i} Tell me about the weather. " * 6 for i in range(PARALLEL)]
            _run_both(lm, [GenerationRequest(lm.tokenize(p), 2, GREEDY_PARAMS) for p in prompts])

        @rule(key=ids)
        def restore_fails(self, key: int) -> None:
            image, _, saved = self.kept[key]
            if not image:
                return
            self.crowd(0)  # neither slot holds it: its state must be put back
            ctx = lm.generator().ctx
            real = ctx.state_set
            ctx.state_set = lambda *a: False  # type: ignore[method-assign]
            try:
                with pytest.raises(ModelUnavailable):
                    run(lm, GenerationRequest([], 1, GREEDY_PARAMS, resume=saved, keep=True))
            finally:
                ctx.state_set = real  # type: ignore[method-assign]

    run_state_machine_as_test(
        KeptIds,
        settings=settings(
            max_examples=6,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
