"""Beam search with Hugging Face semantics, as pure logic over log-probability rows.

Finished hypotheses are scored `sum_logprobs / generated_len ** length_penalty`; the search
stops when `num_beams` hypotheses are finished and no running beam can beat the worst of
them (HF's `early_stopping=False` heuristic), or at `max_new_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax of one row, in float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def repetition_penalize(logits: np.ndarray, seen: Sequence[int], penalty: float) -> np.ndarray:
    """HF repetition penalty: divide positive logits of seen tokens, multiply negative ones."""
    if penalty == 1.0 or not seen:
        return logits
    out = logits.copy()
    idx = np.fromiter(set(seen), dtype=np.int64)
    vals = out[idx]
    out[idx] = np.where(vals < 0, vals * penalty, vals / penalty)
    return out


@dataclass
class Beam:
    """A running hypothesis: generated tokens and their summed log-probability."""

    tokens: list[int]
    score: float


@dataclass(order=True)
class Hypothesis:
    """A finished hypothesis with its length-normalized score."""

    normalized: float
    tokens: list[int] = field(compare=False)
    sum_logprobs: float = field(compare=False)
    ended: bool = field(default=False, compare=False)


@dataclass
class Sampling:
    """Beam-sample settings (HF `do_sample=True` with `num_beams > 1`)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


class BeamSearch:
    """Keeps `num_beams` beams; `step` turns one log-prob row per beam into the next beams."""

    def __init__(
        self,
        num_beams: int,
        *,
        length_penalty: float,
        eos: frozenset[int],
        max_new_tokens: int,
        sampling: Sampling | None = None,
    ) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.eos = eos
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self._rng = np.random.default_rng(sampling.seed) if sampling else None
        self.beams: list[Beam] = [Beam([], 0.0)]
        self.finished: list[Hypothesis] = []
        self.done = False

    def _normalize(self, sum_logprobs: float, length: int) -> float:
        # In log space and clamped: any length_penalty, however large, neither overflows
        # nor divides by an underflowed zero.
        exponent = self.length_penalty * math.log(max(length, 1))
        return sum_logprobs / math.exp(max(-700.0, min(700.0, exponent)))

    def _add(self, tokens: list[int], sum_logprobs: float, ended: bool) -> None:
        hyp = Hypothesis(self._normalize(sum_logprobs, len(tokens)), tokens, sum_logprobs, ended)
        self.finished.append(hyp)
        self.finished.sort(reverse=True)
        del self.finished[self.num_beams :]

    def _candidates(self, scores: np.ndarray) -> np.ndarray:
        """Flat indices of 2*num_beams candidates, best first."""
        k = min(2 * self.num_beams, scores.size)
        flat = scores.ravel()
        top = self._sample(scores, k) if self._rng else np.argpartition(-flat, k - 1)[:k]
        return top[np.argsort(-flat[top], kind="stable")]

    def _sample(self, scores: np.ndarray, k: int) -> np.ndarray:
        assert self.sampling is not None and self._rng is not None
        warped = scores / max(self.sampling.temperature, 1e-6)
        if self.sampling.top_k > 0 and self.sampling.top_k < warped.shape[1]:
            kth = np.partition(warped, -self.sampling.top_k, axis=1)[:, -self.sampling.top_k]
            warped = np.where(warped < kth[:, None], -np.inf, warped)
        if self.sampling.top_p < 1.0:
            for row in warped:
                order = np.argsort(-row)
                probs = np.exp(row[order] - row[order[0]])
                probs /= probs.sum()
                cut = np.searchsorted(np.cumsum(probs), self.sampling.top_p) + 1
                row[order[cut:]] = -np.inf
        flat = warped.ravel()
        p = np.exp(flat - flat.max())
        p /= p.sum()
        k = min(k, int(np.count_nonzero(p)))
        return self._rng.choice(flat.size, size=k, replace=False, p=p)

    def step(self, logprobs: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        """Advance one token; returns (parent beam index, token) for each new beam."""
        vocab = logprobs[0].shape[0]
        scores = np.stack([lp + b.score for lp, b in zip(logprobs, self.beams, strict=True)])
        chosen: list[tuple[int, int, float]] = []
        for rank, idx in enumerate(self._candidates(scores)):
            parent, token = divmod(int(idx), vocab)
            total = float(scores[parent, token])
            if token in self.eos:
                if rank < self.num_beams:
                    self._add(list(self.beams[parent].tokens), total, True)
                continue
            chosen.append((parent, token, total))
            if len(chosen) == self.num_beams:
                break
        self.beams = [Beam([*self.beams[p].tokens, t], s) for p, t, s in chosen]
        generated = len(self.beams[0].tokens) if self.beams else 0
        if not self.beams or generated >= self.max_new_tokens:
            self._finish()
        elif len(self.finished) >= self.num_beams:
            best_running = max(b.score for b in self.beams)
            if self.finished[-1].normalized >= self._normalize(best_running, generated):
                self._finish()
        return [(p, t) for p, t, _ in chosen]

    def _finish(self) -> None:
        for b in self.beams:
            self._add(list(b.tokens), b.score, False)
        self.done = True

    def best(self) -> Hypothesis:
        """The highest-scoring finished hypothesis."""
        return self.finished[0]
