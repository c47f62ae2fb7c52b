"""A stateful property test of the request_id store on the real engine (issue 11).

Two API keys generate under a few request_ids: fresh prompts, continuations, finished
sequences, beams, hang-ups, timeouts, with a store small enough to evict. The invariant:
whenever an id's entry comes back, it is exactly the history that key's own requests
produced (its prompt plus every token the engine generated for it), and the other key's
text never appears in it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daemon.config import embedded_model_path
from daemon.engine.cache import SequenceStore
from daemon.engine.handle import RequestHandle
from daemon.engine.loaded import EngineOptions, LoadedModel
from daemon.engine.types import BeamParams, Chunk, GenerationRequest, SamplingParams
from daemon.errors import EdgedError, Timeout

GREEDY = SamplingParams(temperature=0.0)
KEYS = ("A", "B")
IDS = ("x", "y", "z")
# Each key's own marker word: seeing one key's marker in the other's history is a leak.
MARK = {"A": "PELICAN", "B": "ZEBRA"}
MODES = ("plain", "finish", "beam", "cancel", "timeout", "zero")

_lm: LoadedModel | None = None


def model() -> LoadedModel:
    global _lm
    if _lm is None:
        _lm = LoadedModel("prop", embedded_model_path(), EngineOptions(ctx_size=512, parallel=2))
    return _lm


@pytest.fixture(scope="module", autouse=True)
def _close_model() -> object:
    yield
    global _lm
    if _lm is not None:
        _lm.close()
        _lm = None


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
        text = f"The word {word} {op.rid} means"
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
        self.lm = model()
        # Small enough that a few entries evict each other (KV bytes dominate).
        self.store = SequenceStore(1 << 20, owner_max_bytes=700_000)
        self.ref: dict[tuple[str, str], tuple[int, ...]] = {}

    async def _run(self, op: Op) -> None:
        lm, key = self.lm, (op.owner, op.rid)
        saved = self.store.claim(key)
        if saved is None:
            if key in self.ref:
                assert self.store.evictions > 0, "an entry vanished without an eviction"
                del self.ref[key]
        else:
            assert saved.tokens + saved.pending == self.ref[key]
        resume = None if op.fresh or saved is None else saved
        prompt = [] if resume is not None else prompt_of(lm, op)
        n = 0 if op.mode == "zero" else op.n
        beams = BeamParams(2, 1.0) if op.mode == "beam" else None
        req = GenerationRequest(
            prompt, n, GREEDY, beams=beams, resume=resume, keep=True, owner=op.owner
        )
        loop = asyncio.get_running_loop()
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
    def histories_are_their_own(self) -> None:
        for (owner, rid), ref in self.ref.items():
            text = self.lm.model.detokenize(list(ref))
            other = MARK["B" if owner == "A" else "A"]
            assert other not in text
            assert MARK[owner] in text, (owner, rid, text)

    def teardown(self) -> None:
        assert self.lm.generator().busy_slots == 0
        assert self.lm.generator().outstanding == 0


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=5,
    stateful_step_count=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_model_path_exists() -> None:
    assert Path(embedded_model_path()).is_file()
