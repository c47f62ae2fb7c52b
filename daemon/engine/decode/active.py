"""The scheduler's per-request state, split by concern so their meetings stay visible.

A running request (`Active`) always has a slot and a `Decode` (token-by-token sampling,
text and stops). Beyond that, each concern has its own part: `Scoring` (prompt
log-probabilities for echo), `Fork` (n > 1 choices sharing one prefill) and `Beams` (a beam
search over several slots). Each part is empty or None when the request does not use it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from daemon.engine.decode.beam import BeamSearch
from daemon.engine.decode.detokenize import IncrementalDetokenizer
from daemon.engine.decode.logprobs import token_logprob
from daemon.engine.decode.slots import Slot
from daemon.engine.decode.stops import StopMatcher
from daemon.engine.handle import RequestHandle
from daemon.engine.native.sampler import SamplerChain
from daemon.engine.speculation.speculate import Speculation
from daemon.engine.types import (
    Chunk,
    FinishReason,
    GenerationRequest,
    PromptProgress,
    TokenLogprob,
)


@dataclass(eq=False)
class Decode:
    """One sequence generating token by token: sampler, text so far, stop strings."""

    sampler: SamplerChain | None
    detok: IncrementalDetokenizer
    stops: StopMatcher
    generated: int = 0
    # Sampled but not decoded yet: the next step feeds it (and a cut keeps it as pending).
    next_token: int = -1
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # Tokens whose text is held back (a possible stop string, a partial UTF-8 character):
    # reported with the chunk that releases it, so every chunk's token ids match its text.
    held: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Scoring:
    """Prompt scoring (echo + logprobs): batch rows of the current chunk and the results."""

    rows: list[tuple[int, int]] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def score(self, logits_of: Callable[[int], np.ndarray], req: GenerationRequest) -> None:
        """Log-probability of each prompt token given the ones before it, from this step's
        rows (`logits_of(row)`); the last prompt position has nothing after it to score."""
        prompt = req.prompt_tokens
        for row, pos in self.rows:
            if pos + 1 < len(prompt):
                lp = token_logprob(logits_of(row), prompt[pos + 1], req.logprobs or 0)
                self.logprobs.append(lp)
        self.rows.clear()


@dataclass(eq=False)
class Fork:
    """n > 1: siblings wait for the leader's prefill, then take a copy of its KV."""

    children: list[Active] = field(default_factory=list)
    leader: Active | None = None


@dataclass(eq=False)
class Beams:
    """A beam search in flight: one slot per beam, and the search state."""

    search: BeamSearch
    slots: list[Slot]
    rows: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Active:
    """A request that owns one slot (or several, for beams)."""

    handle: RequestHandle
    slot: Slot
    # Tokens still to feed before sampling (prompt chunks, or a continuation's pending).
    pending: list[int]
    decode: Decode
    n_prompt: int
    # Length of the history this request started from (prompt, or everything a
    # continuation restored): what beams share, and where a beam answer begins.
    base: int
    beams: Beams | None = None
    scoring: Scoring = field(default_factory=Scoring)
    fork: Fork = field(default_factory=Fork)
    # Batch row whose logits belong to this request this step (-1: none).
    row: int = -1
    # Speculative decoding (None: this request never drafts, e.g. beams).
    spec: Speculation | None = None
    # When it took its slot (the clock of its prompt progress reports).
    admitted_at: float = field(default_factory=time.monotonic)

    def progress(self) -> Chunk:
        """A chunk reporting how far the prompt is in (only requests that asked get one)."""
        done = len(self.slot.tokens)
        report = PromptProgress(
            done + len(self.pending),
            self.handle.usage.cached_tokens,
            done,
            (time.monotonic() - self.admitted_at) * 1000,
        )
        return Chunk("", progress=report)

    def chunk(self, text: str, tokens: tuple[int, ...], reason: FinishReason | None) -> Chunk:
        """A chunk carrying the log-probabilities and held tokens gathered since the last."""
        lps, self.decode.logprobs = tuple(self.decode.logprobs), []
        tokens, self.decode.held = (*self.decode.held, *tokens), []
        plps, self.scoring.logprobs = tuple(self.scoring.logprobs), []
        return Chunk(text, tokens, reason, lps, plps)

    @property
    def slots(self) -> list[Slot]:
        return self.beams.slots if self.beams else [self.slot]

    @property
    def owner(self) -> str:
        return self.handle.request.owner


class FairQueue:
    """Requests waiting for slots: one line per owner (API key), served round-robin.

    One key's burst therefore waits behind every other key's next request instead of in
    front of it. `limit` caps the requests of one owner running at once (None: no cap); a
    request's `owner_limit` (its key's own cap) replaces it for that owner.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._lines: OrderedDict[str, deque[RequestHandle]] = OrderedDict()

    def append(self, h: RequestHandle) -> None:
        self._lines.setdefault(h.request.owner, deque()).append(h)

    def remove(self, h: RequestHandle) -> None:
        line = self._lines.get(h.request.owner)
        if line is not None:
            line.remove(h)
            if not line:
                del self._lines[h.request.owner]

    def served(self, owner: str) -> None:
        """`owner` just got a slot: its line goes to the back of the round."""
        if owner in self._lines:
            self._lines.move_to_end(owner)

    def heads(self, running: dict[str, int]) -> list[RequestHandle]:
        """The first request of each owner, in turn order, skipping owners at their cap."""
        heads = []
        for owner, line in self._lines.items():
            limit = line[0].request.owner_limit or self.limit  # a key's own cap comes first
            if limit is None or running.get(owner, 0) < limit:
                heads.append(line[0])
        return heads

    def clear(self) -> None:
        self._lines.clear()

    def __iter__(self) -> Iterator[RequestHandle]:
        return iter([h for line in self._lines.values() for h in line])

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __bool__(self) -> bool:
        return bool(self._lines)
