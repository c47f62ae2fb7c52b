"""Kept state never crosses an API key (issue 25 rows 4, 7 and 8).

Row 4 over real HTTP: key B keeps a beam-search request_id on a guessed prompt, key A fills
the slots with its own (secret) prompt, key B continues its id. The prefix-hit counter must
not depend on whether B's guess matched A's prompt. Row 7: one key's stored Responses evict
its own, never another key's. Row 8: request_id spills run off the scheduler thread.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from daemon.api.responses.store import ResponseStore, StoredResponse
from daemon.config import embedded_model_path
from daemon.engine.caches.cache import SequenceStore
from daemon.engine.caches.prompt_cache import BLOCK, PromptCache
from daemon.engine.errors import ModelUnavailable
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import GenerationRequest, SamplingParams
from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_generate_isolation import A, B, _metric, gen

WORDS = [
    "river",
    "stone",
    "light",
    "winter",
    "garden",
    "market",
    "silver",
    "letter",
    "harbor",
    "meadow",
]
SECRET = (
    "<|im_start|>user\nThe launch code is "
    + " ".join(WORDS[(i * 7) % 10] for i in range(60))
    + ". Keep it.<|im_end|>\n<|im_start|>assistant\n"
)
WRONG = (
    "<|im_start|>user\nThe launch code is "
    + " ".join(WORDS[(i * 3) % 10] for i in range(60))
    + ". Keep it.<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("state-iso"),
        *("--parallel", "2", "--ctx-size", "1024", "--threads", "1"),
        env={"EDGED_API_KEYS": "key-a,key-b"},
    )
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=600) as c:
        yield c


def _hits(http: httpx.Client) -> float:
    return _metric(http.get("/metrics", headers=A).text, "edged_prefix_cache_hit_tokens")


def _continue_after_a(http: httpx.Client, rid: str) -> float:
    """A fills both slots with its secret prompt (two beams); B continues its id: the
    prefix tokens B's continuation was credited with."""
    assert gen(http, A, f"fill-{rid}", SECRET, num_beams=2, max_new_tokens=2).status_code == 200
    before = _hits(http)
    r = gen(http, B, rid, num_beams=2, max_new_tokens=2)
    assert r.status_code == 200, r.text
    return _hits(http) - before


def test_row4_a_continued_beam_id_reads_nothing_of_another_keys_prompt(
    http: httpx.Client,
) -> None:
    for rid, guess in (("right", SECRET), ("wrong", WRONG)):
        r = gen(http, B, rid, guess, num_beams=2, max_new_tokens=1)
        assert r.status_code == 200, r.text
    right = _continue_after_a(http, "right")
    wrong = _continue_after_a(http, "wrong")
    assert right == wrong  # the guess matching A's prompt changes no count
    # Plain continuations too (their KV state is kept; the slot's is another key's).
    for rid, guess in (("p-right", SECRET), ("p-wrong", WRONG)):
        assert gen(http, B, rid, guess, max_new_tokens=1).status_code == 200
    assert _continue_after_a(http, "p-right") == _continue_after_a(http, "p-wrong")
    # A's own repeat still reuses its prefix.
    before = _hits(http)
    assert gen(http, A, "again", SECRET, max_new_tokens=2).status_code == 200
    assert _hits(http) - before >= 64


def _resp(n: int) -> StoredResponse:
    return StoredResponse({"id": str(n)}, [], [], "m", "", [], model_identity="x")


def test_row7_one_keys_responses_never_evict_anothers() -> None:
    store = ResponseStore(max_entries=8)
    assert store.owner_max_entries == 2
    store.put("bob", "keep", _resp(0))
    for i in range(50):
        store.put("alice", f"r{i}", _resp(i))
    assert store.get("bob", "keep") is not None
    assert store.owned("alice") == 2
    assert store.get("alice", "r49") is not None and store.get("alice", "r0") is None
    # Past the total bound the key holding the most gives way first.
    store = ResponseStore(max_entries=4, owner_max_entries=3)
    store.put("bob", "keep", _resp(0))
    for i in range(3):
        store.put("alice", f"r{i}", _resp(i))
    store.put("carol", "c", _resp(9))
    assert len(store) == 4
    assert store.get("bob", "keep") is not None and store.get("carol", "c") is not None
    assert store.delete("alice", "r2") is not None and store.owned("alice") == 1


def test_row8_request_id_spills_run_off_the_scheduler_thread(tmp_path: Path) -> None:
    """Entries released by the scheduler thread are evicted there, but written by the
    store's writer thread."""
    store = SequenceStore(1, spill_dir=tmp_path / "spill")  # every entry is evicted
    writers: list[int] = []
    store.on_spill = writers.append
    lm = LoadedModel("spill", embedded_model_path(), EngineOptions(ctx_size=256, parallel=2), store)
    try:
        sched = lm.generator()
        released_on: list[int] = []

        async def one(rid: str) -> None:
            req = GenerationRequest(
                lm.tokenize(f"Count to {rid}:"),
                3,
                SamplingParams(temperature=0.0),
                keep=True,
                owner="k",
            )
            store.claim(("k", rid))
            h = lm.submit(req)

            def done(h: object) -> None:
                released_on.append(threading.get_ident())
                store.release(("k", rid), h.saved)  # type: ignore[attr-defined]

            h.add_done_callback(done)
            async for _ in h.chunks():
                pass

        async def run() -> None:
            await asyncio.gather(*(one(str(i)) for i in range(3)))

        asyncio.run(run())
        store.flush()
        assert writers, "nothing was spilled"
        assert sched._thread.ident in released_on
        assert sched._thread.ident not in writers
        assert all(store.claim(("k", str(i))) is not None for i in range(3))
    finally:
        lm.close()


def test_row8_a_lost_workers_model_stops_on_its_own_thread() -> None:
    """RPC worker loss (`LoadedModel.abandon`): the scheduler thread ends its running and
    waiting requests itself and exits, frees no llama.cpp object (they would live on the
    lost worker), and its prompt cache lets go of its memory."""
    lm = LoadedModel("retire", embedded_model_path(), EngineOptions(ctx_size=512, parallel=1))
    sched = lm.generator()
    try:
        prompt = lm.tokenize(" ".join(WORDS * 10))  # > one prompt-cache block

        async def run() -> None:
            warm = lm.submit(GenerationRequest(prompt, 1, SamplingParams(temperature=0.0)))
            async for _ in warm.chunks():
                pass
            other = lm.submit(GenerationRequest(lm.tokenize("Hi"), 2, SamplingParams()))
            async for _ in other.chunks():  # the first prompt's slot is vacated to the cache
                pass
            assert len(sched.cache) > 0
            running = lm.submit(GenerationRequest(prompt, 400, SamplingParams(temperature=0.0)))
            waiting = lm.submit(GenerationRequest(prompt, 4, SamplingParams(temperature=0.0)))
            async for _ in running.chunks():
                break  # it is generating now; `waiting` has no slot
            stopped = await asyncio.to_thread(lm.abandon, ModelUnavailable("lost"), 30.0)
            assert stopped and not sched.alive
            for h in (running, waiting):
                with pytest.raises(ModelUnavailable):
                    async for _ in h.chunks():
                        pass
                assert h.finish_reason is not None

        asyncio.run(run())
        assert sched.ctx.ptr is not None and lm.model.ptr is not None  # nothing freed
        assert len(sched.cache) == 0 and sched.cache.nbytes == 0
        with pytest.raises(ModelUnavailable):
            lm.generator()
    finally:
        sched.batch.close()
        sched.ctx.close()
        lm.model.close()


def test_row4_the_draft_context_keeps_no_kv_of_another_key(tmp_path: Path) -> None:
    """Draft-model speculation keeps each slot's draft KV across requests: another key's
    request on that slot starts it afresh (beyond the shared prefix: none here), the same
    key's reuses it."""
    draft = tmp_path / "draft.gguf"
    shutil.copyfile(embedded_model_path(), draft)
    opts = EngineOptions(
        ctx_size=256, parallel=1, flash_attn=True, draft_model=draft, speculate_always=True
    )
    lm = LoadedModel("drafting", embedded_model_path(), opts)
    try:
        spec = lm.generator().spec
        assert spec.draft_ctx is not None
        cuts: list[int] = []
        original = spec.draft_ctx.seq_rm

        def seq_rm(seq: int, p0: int = -1, p1: int = -1) -> None:
            cuts.append(p0)
            original(seq, p0, p1)

        spec.draft_ctx.seq_rm = seq_rm  # type: ignore[method-assign]
        prompt = lm.tokenize("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n")

        async def one(owner: str) -> list[int]:
            h = lm.submit(
                GenerationRequest(prompt, 12, SamplingParams(temperature=0.0), owner=owner)
            )
            return [t async for c in h.chunks() for t in c.token_ids]

        first = asyncio.run(one("a"))
        assert spec.drafted["draft"] > 0
        cuts.clear()
        assert asyncio.run(one("b")) == first
        assert cuts and cuts[0] == 0  # b's drafts start from an empty draft sequence
        cuts.clear()
        assert asyncio.run(one("b")) == first
        assert not cuts or cuts[0] > 0  # b's own prefix stays
    finally:
        lm.close()


def test_row8_a_prompt_cache_held_by_a_parked_thread_is_given_up() -> None:
    """Releasing a lost model's cache waits a bounded time for its lock (the scheduler
    thread may be parked inside llama.cpp while saving a state, holding it for good)."""
    cache = PromptCache(1 << 20)
    assert cache.save("k", list(range(2 * BLOCK)), lambda: b"s" * 100)
    cache._lock.acquire()
    try:
        assert cache.clear(0.05) is False
    finally:
        cache._lock.release()
    assert cache.clear(0.05) and len(cache) == 0


def test_row8_a_lost_workers_embedding_model_stops_too(
    minilm_gguf: Callable[[str], Path],
) -> None:
    """The same for an embedding model: its worker thread ends (inputs still queued are
    answered 503), nothing of llama.cpp is freed, and later inputs are refused."""
    lm = LoadedModel("emb", minilm_gguf("f16"), EngineOptions(ctx_size=128, parallel=2))
    assert lm.embedder is not None
    worker = lm.embedder

    async def run() -> None:
        tokens = lm.tokenize("hello world")
        assert len(await worker.embed([tokens])) == 1
        stopped = await asyncio.to_thread(lm.abandon, ModelUnavailable("lost"), 30.0)
        assert stopped and not worker.alive
        assert lm.model.ptr  # not freed: it would live on the lost worker
        with pytest.raises(ModelUnavailable):
            await worker.embed([tokens])

    asyncio.run(run())


def test_draft_acceptance_is_learned_per_key() -> None:
    """How well one key's drafts verify (its text repeating itself) shapes only that key's
    later drafting decisions, never another key's timing."""
    from daemon.engine.speculation.drafting import PRIOR

    opts = EngineOptions(ctx_size=256, parallel=2, flash_attn=True, speculate=True)
    lm = LoadedModel("prior", embedded_model_path(), opts)
    spec = lm.generator().spec
    try:
        assert spec.usable
        text = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,"

        async def run(owner: str) -> None:
            req = GenerationRequest(lm.tokenize(text), 40, SamplingParams(0.0), owner=owner)
            async for _ in lm.submit(req).chunks():
                pass

        asyncio.run(run("A"))
        assert sum(spec.drafted.values()) > 0  # A's counting was drafted and verified
        learned = spec.prior[("A", "ngram")]
        assert learned != PRIOR["ngram"]
        assert ("B", "ngram") not in spec.prior  # B starts from the prior of no history
        asyncio.run(run("B"))
        assert spec.prior[("A", "ngram")] == learned  # and B's run leaves A's alone
    finally:
        lm.close()
