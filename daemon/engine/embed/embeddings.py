"""Embeddings: one thread per embedding model packs queued inputs into one batch per decode.

Each decode takes waiting inputs in arrival order, one sequence each, until the sequence
slots or the batch's token budget run out; every sequence's pooled vector is read with
`llama_get_embeddings_seq`, L2-normalized and handed to its asyncio future. A reranker
(RANK pooling) runs through the same worker: each sequence is one query/document pair and
yields the classifier head's raw outputs instead of a vector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from daemon.engine.decode.worker import STOP, ContextWorker
from daemon.engine.errors import (
    ContextOverflow,
    GenerationFailed,
    InvalidInput,
    ModelUnavailable,
    WrongModelKind,
)
from daemon.engine.native.llama import ContextOptions, Model, Pooling
from daemon.errors import EdgedError

if TYPE_CHECKING:
    from daemon.engine.loading.options import EngineOptions

log = logging.getLogger("edged.embeddings")

# Poolings that turn a sequence into one vector; RANK yields a reranker score instead.
VECTOR_POOLINGS = frozenset({Pooling.MEAN, Pooling.CLS, Pooling.LAST})
# Encoder-only architectures: embedding models even when their GGUF names no pooling.
ENCODER_ARCHS = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert"})


def declared_pooling(model: Model) -> Pooling | None:
    """The pooling type the GGUF metadata declares, or None."""
    arch = model.meta("general.architecture")
    raw = model.meta(f"{arch}.pooling_type") if arch else None
    try:
        return Pooling(int(raw)) if raw is not None else None
    except ValueError:
        return None


def embedding_pooling(model: Model) -> Pooling | None:
    """How to pool this model's token vectors, or None when it is not an embedding model."""
    pooling = declared_pooling(model)
    if pooling in VECTOR_POOLINGS:
        return pooling
    if pooling is None and model.meta("general.architecture") in ENCODER_ARCHS:
        return Pooling.MEAN  # what sentence-transformers uses for BERT-style encoders
    return None


def is_reranker(model: Model) -> bool:
    """Whether the GGUF declares RANK pooling (a cross-encoder with a classification head)."""
    return declared_pooling(model) == Pooling.RANK


def normalize(vec: np.ndarray) -> np.ndarray:
    """The vector scaled to unit L2 length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0.0 else vec


def truncate(vec: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first `dimensions` components and re-normalize (Matryoshka-style)."""
    if dimensions is None or dimensions >= vec.shape[0]:
        return vec
    return normalize(vec[:dimensions])


@dataclass(eq=False)
class _Job:
    """One input: its tokens and the future its vector resolves."""

    tokens: list[int]
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


class Embedder(ContextWorker):
    """Owns one embedding llama_context; `embed` queues inputs, one worker thread decodes them."""

    def __init__(
        self,
        model: Model,
        options: ContextOptions,
        *,
        max_tokens: int,
        max_queue: int,
        name: str = "model",
    ) -> None:
        super().__init__(model, options, max_queue=max_queue, name=name, thread=f"edged-emb-{name}")
        # One input must fit one decode: encoders cannot split a sequence across ubatches.
        self.max_tokens = min(max_tokens, options.n_batch)
        self.ranks = options.pooling == Pooling.RANK
        self._busy = 0
        self._thread.start()

    @classmethod
    def for_model(
        cls, model: Model, pooling: Pooling, ctx_size: int, options: EngineOptions, name: str
    ) -> Embedder:
        """An embedder sized from the engine options: `parallel` sequences per decode."""
        n_batch = max(options.batch_size, ctx_size)
        return cls(
            model,
            ContextOptions(
                # Causal embedding models keep KV per sequence; encoders keep none.
                n_ctx=ctx_size * options.parallel,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_seq_max=options.parallel,
                n_threads=options.threads,
                n_threads_batch=options.threads_batch or options.threads,
                # Unless turned off: 2.5x the throughput on a CPU, scores within 1e-4 of
                # the plain kernel (batch neighbours alone move them 5e-5), no KV to reuse.
                flash_attn=options.flash_attn is not False,
                embeddings=True,
                pooling=pooling,
            ),
            max_tokens=ctx_size,
            max_queue=options.max_queue,
            name=name,
        )

    # ---- asyncio side -------------------------------------------------------------

    @property
    def n_embd(self) -> int:
        """Length of the vectors this model produces."""
        return self.model.n_embd

    @property
    def busy_slots(self) -> int:
        """Sequences in the decode running now."""
        return self._busy

    def check(self, inputs: list[list[int]], param: str = "input") -> None:
        """Reject empty inputs, unknown token ids and inputs longer than the context."""
        if not inputs:
            raise InvalidInput("the input is empty", subject=param)
        n_vocab = self.model.n_vocab
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidInput(f"input {i} is empty", subject=param)
            if len(tokens) > self.max_tokens:
                raise ContextOverflow(
                    f"input {i} has {len(tokens)} tokens; this model embeds at most "
                    f"{self.max_tokens}",
                    subject=param,
                )
            if any(not 0 <= t < n_vocab for t in tokens):
                raise InvalidInput(f"token ids must be in [0, {n_vocab})", subject=param)

    async def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Unit-length pooled vectors of the inputs, in order; decoded together with others."""
        if self.ranks:
            raise WrongModelKind(
                f"`{self.name}` is a reranker; it gives scores, not embeddings", subject="model"
            )
        return await self._run_inputs(inputs, "input")

    async def score(self, pairs: list[list[int]], param: str = "documents") -> list[float]:
        """A reranker's relevance score (classifier output 0, raw) of each tokenized pair."""
        if not self.ranks:
            raise WrongModelKind(
                f"`{self.name}` is not a reranker (its GGUF declares no rank pooling)",
                subject="model",
            )
        return [float(out[0]) for out in await self._run_inputs(pairs, param)]

    async def _run_inputs(self, inputs: list[list[int]], param: str) -> list[np.ndarray]:
        self.check(inputs, param)
        loop = asyncio.get_running_loop()
        jobs = [_Job(tokens, loop.create_future(), loop) for tokens in inputs]
        # One inbox item per request, so a racing worker never splits its inputs.
        self._enqueue(jobs)
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        finally:
            self._done()
            for j in jobs:
                j.future.cancel()  # a no-op once resolved; otherwise the worker skips it

    # ---- worker thread ------------------------------------------------------------

    def _run(self) -> None:
        pending: deque[_Job] = deque()
        while self._take_inbox(pending):
            group = self._pack(pending)
            if group:
                self._decode_group(group)
            self.last_beat = time.monotonic()
        _deliver([(j, ModelUnavailable("the model was unloaded", retry_after=1)) for j in pending])

    def _take_inbox(self, pending: deque[_Job]) -> bool:
        """Move queued inputs into `pending`, blocking while there is nothing to do."""
        while True:
            try:
                item = self._inbox.get(timeout=1.0) if not pending else self._inbox.get_nowait()
            except queue.Empty:
                if pending:
                    return True
                self.last_beat = time.monotonic()
                continue
            if item is STOP:
                return False
            if isinstance(item, list):
                pending.extend(item)

    def _pack(self, pending: deque[_Job]) -> list[_Job]:
        """Take waiting inputs in order while sequence slots and the token budget allow."""
        group: list[_Job] = []
        budget = self.batch.capacity
        while pending and len(group) < self.n_slots:
            job = pending[0]
            if job.future.done():  # cancelled: the client went away
                pending.popleft()
                continue
            if len(job.tokens) > budget:
                if not group:  # `check` keeps this from happening; never spin on it
                    pending.popleft()
                    _deliver([(job, GenerationFailed("the input does not fit one batch"))])
                    continue
                break
            pending.popleft()
            group.append(job)
            budget -= len(job.tokens)
        return group

    def _decode_group(self, group: list[_Job]) -> None:
        results: list[tuple[_Job, np.ndarray | EdgedError]] = []
        self._busy = len(group)
        try:
            vectors = self._decode(group)
            results = list(zip(group, vectors, strict=True))
        except Exception as exc:  # the thread must outlive any single failure
            log.exception("embedding decode failed")
            error = (
                exc if isinstance(exc, EdgedError) else GenerationFailed(f"embedding failed: {exc}")
            )
            results = [(j, error) for j in group]
        finally:
            self._busy = 0
        self.steps += 1
        _deliver(results)

    def _decode(self, group: list[_Job]) -> list[np.ndarray]:
        b = self.batch
        b.clear()
        for seq, job in enumerate(group):
            for pos, tok in enumerate(job.tokens):
                b.add(tok, pos, seq, True)
        # Every sequence starts at position 0: nothing of the previous batch may remain.
        self.ctx.clear()
        rc = self._llama_decode(b)
        if rc != 0:
            raise GenerationFailed(f"llama_decode returned {rc}")
        vectors = []
        for seq in range(len(group)):
            vec = self.ctx.rank_seq(seq) if self.ranks else self.ctx.embeddings_seq(seq)
            if vec is None:
                raise GenerationFailed("llama.cpp produced no pooled embedding")
            vectors.append(vec if self.ranks else normalize(vec))
        return vectors


def _deliver(results: list[tuple[_Job, np.ndarray | EdgedError]]) -> None:
    """Resolve futures on their own event loops, one thread-safe call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, np.ndarray | EdgedError]]] = {}
    for job, item in results:
        by_loop.setdefault(job.loop, []).append((job, item))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve_all, items)


def _resolve_all(items: list[tuple[_Job, np.ndarray | EdgedError]]) -> None:
    for job, item in items:
        if job.future.done():
            continue
        if isinstance(item, EdgedError):
            job.future.set_exception(item)
        else:
            job.future.set_result(item)
