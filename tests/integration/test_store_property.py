"""A stateful property test of the request_id store on the real engine (issue 11).

Three API keys generate under a few request_ids: fresh prompts, continuations, finished
sequences, beams, hang-ups, timeouts, with a store small enough to evict. Between steps the
model file may be replaced under the same name (issue 25 row 5: two files of the model, one
byte apart, share the store as the registry's per-name store does). The invariant: whenever
an id's entry comes back, it is exactly the history that key's own requests produced (its
prompt plus every token the engine generated for it) on the model file now served; the
other keys' text never appears in it; an entry of the other file is refused by the engine
(ModelChanged) and stays as it was.

Speculation is on (n-gram drafts verified on every step where one exists) with flash
attention over 256 cells a sequence, where this llama.cpp computes verified rows exactly as
single ones: a history made only of greedy decoding (continued any number of times, cut by
hang-ups and timeouts) equals what a plain engine without speculation decodes from the same
prompt in one go.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daemon.config import embedded_model_path
from daemon.engine.caches.cache import SequenceStore
from daemon.engine.errors import ModelChanged
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import BeamParams, Chunk, GenerationRequest, SamplingParams
from daemon.errors import EdgedError, Timeout

GREEDY = SamplingParams(temperature=0.0)
KEYS = ("A", "B", "C")
IDS = ("x", "y", "z")
# Each key's own marker word: seeing one key's marker in the other's history is a leak.
MARK = {"A": "PELICAN", "B": "ZEBRA", "C": "WALRUS"}
MODES = ("plain", "finish", "beam", "cancel", "timeout", "zero")

_lms: list[LoadedModel] = []
_plain: dict[str, LoadedModel] = {}  # by model identity: the reference without speculation
_greedy: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = {}
_tmp: list[Path] = []
REF_TOKENS = 64  # more than one example's steps can generate for one id


def _replaced_file() -> Path:
    """Another file of the model: the embedded GGUF with one tensor byte changed."""
    d = Path(tempfile.mkdtemp(prefix="edged-prop-"))
    _tmp.append(d)
    path = d / "prop.gguf"
    shutil.copyfile(embedded_model_path(), path)
    with path.open("r+b") as f:
        f.seek(-4096, 2)
        b = f.read(1)
        f.seek(-4096, 2)
        f.write(bytes([b[0] ^ 1]))
    return path


def models() -> list[LoadedModel]:
    """The model as first served, and as served after its file was replaced."""
    if not _lms:
        plain = EngineOptions(ctx_size=256, parallel=1, flash_attn=True)
        spec = EngineOptions(
            ctx_size=256, parallel=2, flash_attn=True, speculate=True, speculate_always=True
        )
        for path in (embedded_model_path(), _replaced_file()):
            lm = LoadedModel("prop", path, spec)
            assert lm.generator().spec.usable  # the probe found verified rows exact here
            _lms.append(lm)
            _plain[lm.identity] = LoadedModel("plain", path, plain)
        assert _lms[0].identity != _lms[1].identity
    return _lms


def plain_greedy(identity: str, prompt: tuple[int, ...]) -> tuple[int, ...]:
    """What the plain engine of that file decodes greedily from `prompt` in one go."""
    key = (identity, prompt)
    if key not in _greedy:
        lm = _plain[identity]

        async def run() -> tuple[int, ...]:
            h = lm.submit(GenerationRequest(list(prompt), REF_TOKENS, GREEDY))
            return tuple([t async for c in h.chunks() for t in c.token_ids])

        _greedy[key] = asyncio.run(run())
    return _greedy[key]


def model() -> LoadedModel:
    return models()[0]


@pytest.fixture(scope="module", autouse=True)
def _close_model() -> object:
    yield
    # The speculative path ran: drafts were verified (and some accepted) along the way.
    drafted = sum(sum(lm.generator().spec.drafted.values()) for lm in _lms)
    accepted = sum(sum(lm.generator().spec.accepted.values()) for lm in _lms)
    print(f"store property: {drafted} tokens drafted, {accepted} accepted")
    assert not _lms or (drafted > 0 and accepted > 0)
    for lm in [*_lms, *_plain.values()]:
        lm.close()
    _lms.clear()
    _plain.clear()
    _greedy.clear()
    for d in _tmp:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Op:
    owner: str
    rid: str
    fresh: bool
    mode: str
    n: int


def prompt_of(lm: LoadedModel, op: Op) -> list[int]:
    word = MARK[op.owner]
    if op.mode == "finish":
        text = f"<|im_start|>user\nSay {word}.<|im_end|>\n<|im_start|>assistant\n"
    else:
        # Said twice: the n-gram lookup then finds drafts in the prompt itself.
        text = f"The word {word} {op.rid} means {word}. The word {word} {op.rid} means"
    return lm.tokenize(text)


async def _engine_output(h: RequestHandle) -> list[int]:
    """Every token the engine produced for `h`, read past an error the test injected."""
    ids: list[int] = []
    while True:
        item = await h._queue.get()
        if isinstance(item, Timeout):
            continue  # ours: the engine goes on until its next step
        if isinstance(item, EdgedError):
            raise item
        assert isinstance(item, Chunk)
        ids.extend(item.token_ids)
        if item.finish_reason is not None:
            return ids


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lms = models()
        self.lm = self.lms[0]
        # Small enough that a few entries evict each other (KV bytes dominate).
        self.store = SequenceStore(1 << 20, owner_max_bytes=700_000)
        self.ref: dict[tuple[str, str], tuple[int, ...]] = {}
        # The identity of the model file each kept entry was computed by.
        self.made_by: dict[tuple[str, str], str] = {}
        # The prompt a kept history started from, while it holds greedy decoding only.
        self.greedy_from: dict[tuple[str, str], tuple[int, ...]] = {}

    @rule()
    def replace_model_file(self) -> None:
        """The operator copies the other file over the model; the next load serves it."""
        self.lm = self.lms[1] if self.lm is self.lms[0] else self.lms[0]

    async def _run(self, op: Op) -> None:
        lm, key = self.lm, (op.owner, op.rid)
        saved = self.store.claim(key)
        if saved is None:
            if key in self.ref:
                assert self.store.evictions > 0, "an entry vanished without an eviction"
                del self.ref[key]
        else:
            assert saved.tokens + saved.pending == self.ref[key]
            assert saved.model_id == self.made_by[key]
        loop = asyncio.get_running_loop()
        if saved is not None and saved.model_id != lm.identity and not op.fresh:
            # Made by the other file: the engine refuses it, and the entry stays as it was.
            gone: asyncio.Future[None] = loop.create_future()

            def refused(handle: RequestHandle) -> None:
                self.store.release(key, handle.saved)
                loop.call_soon_threadsafe(gone.set_result, None)

            h = lm.submit(GenerationRequest([], 4, GREEDY, resume=saved, keep=True, owner=op.owner))
            h.add_done_callback(refused)
            with pytest.raises(ModelChanged):
                await _engine_output(h)
            await gone
            assert h.saved is None
            return
        resume = None if op.fresh or saved is None else saved
        prompt = [] if resume is not None else prompt_of(lm, op)
        n = 0 if op.mode == "zero" else op.n
        beams = BeamParams(2, 1.0) if op.mode == "beam" else None
        req = GenerationRequest(
            prompt, n, GREEDY, beams=beams, resume=resume, keep=True, owner=op.owner
        )
        done: asyncio.Future[None] = loop.create_future()

        def finished(handle: RequestHandle) -> None:
            self.store.release(key, handle.saved)
            loop.call_soon_threadsafe(done.set_result, None)

        h = lm.submit(req)
        h.add_done_callback(finished)
        if op.mode == "cancel":
            h.cancel()
        elif op.mode == "timeout":
            h.fail(Timeout("cut"))
        ids = await _engine_output(h)
        await done
        if h.saved is not None:
            base = resume.tokens + resume.pending if resume is not None else tuple(prompt)
            self.ref[key] = base + tuple(ids)
            self.made_by[key] = lm.identity
            assert h.saved.model_id == lm.identity
            start = tuple(prompt) if resume is None else self.greedy_from.get(key)
            if beams is None and start is not None:
                self.greedy_from[key] = start
            else:  # beams choose by sequence score: not what greedy decoding gives
                self.greedy_from.pop(key, None)

    @rule(
        ops=st.lists(
            st.builds(
                Op,
                owner=st.sampled_from(KEYS),
                rid=st.sampled_from(IDS),
                fresh=st.booleans(),
                mode=st.sampled_from(MODES),
                n=st.integers(1, 10),
            ),
            min_size=1,
            max_size=2,
            unique_by=lambda o: (o.owner, o.rid),
        )
    )
    def generate(self, ops: list[Op]) -> None:
        """One or two requests at once (they share the engine's two slots)."""

        async def main() -> None:
            await asyncio.gather(*(self._run(op) for op in ops))

        asyncio.run(main())

    @invariant()
    def greedy_histories_equal_plain_decoding(self) -> None:
        for key, start in self.greedy_from.items():
            if key not in self.ref:
                continue
            made = self.ref[key][len(start) :]
            want = plain_greedy(self.made_by[key], start)
            n = min(len(made), len(want))  # plain decoding stops at the end of generation
            assert made[:n] == want[:n], (key, made, want)

    @invariant()
    def histories_are_their_own(self) -> None:
        for (owner, rid), ref in self.ref.items():
            text = self.lm.model.detokenize(list(ref))
            for other in KEYS:
                if other != owner:
                    assert MARK[other] not in text
            assert MARK[owner] in text, (owner, rid, text)

    def teardown(self) -> None:
        for lm in self.lms:
            assert lm.generator().busy_slots == 0
            assert lm.generator().outstanding == 0


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=5,
    stateful_step_count=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_model_path_exists() -> None:
    assert Path(embedded_model_path()).is_file()
