"""Speculative decoding's bookkeeping: drafts from n-gram lookup, acceptance, step cost.

A drafting sequence adds its draft tokens as extra rows of the shared batch; the scheduler
then samples every row with the request's own sampler chain and keeps the drafts up to the
first row whose sampled token differs (that sample is the correction token).

Why this is exact. Both draft sources propose a single token per position (n-gram lookup
copies the continuation of an earlier occurrence; the draft model takes its argmax), so the
draft distribution q is a point mass at x. Rejection sampling with a point mass accepts x
with probability min(1, p(x)/1) = p(x) and otherwise samples from norm(max(0, p - q)), which
is p without x: exactly what drawing y ~ p and keeping x iff y = x does. Each row's sample
is drawn by the request's own chain (logit_bias, penalties, grammar, top-k/p, temperature,
seed) in the order plain decoding would draw it, and every sampled token is emitted, so the
chain's state (penalty history, grammar stack, RNG) evolves exactly as without
speculation: greedy output is the same, and sampled output has the target distribution
(with a seed: the same draws, hence the same text up to floating-point ties).

Why it never costs. Each verification row costs time (on a CPU nearly a token's worth).
`StepCost` fits the measured time of decode steps as a + b·rows; each sequence estimates its
per-token acceptance α; a sequence drafts k tokens only when the expected tokens per second
of the whole step, (N + E_k) / (a + b·(N + k) + draft time), beats N / (a + b·N), where
E_k = α(1 − α^k)/(1 − α). A sequence for which no k pays stops drafting and re-probes with
one token after a back-off that doubles (16 … 256 of its steps) while probes keep failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Speculation is judged worth it only with this margin over plain decoding.
MARGIN = 1.03
PROBE_FIRST = 16
PROBE_MAX = 256


class NgramIndex:
    """Latest earlier occurrence of every n-gram (n_min..n_max) of a token history."""

    def __init__(self, n_min: int = 2, n_max: int = 4) -> None:
        self.n_min = n_min
        self.n_max = n_max
        self.history: list[int] = []
        # n-gram -> index of the token that followed its latest occurrence
        self._next: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        """Append committed tokens (prompt, emitted output)."""
        h = self.history
        for tok in tokens:
            h.append(tok)
            end = len(h) - 1  # the n-grams ending just before `tok` now have a follower
            for n in range(self.n_min, self.n_max + 1):
                if end >= n:
                    self._next[tuple(h[end - n : end])] = end

    def draft(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the longest n-gram equal to the history's tail."""
        h = self.history
        if k <= 0:
            return []
        for n in range(self.n_max, self.n_min - 1, -1):
            if len(h) < n:
                continue
            at = self._next.get(tuple(h[-n:]))
            if at is not None:
                return h[at : at + k]
        return []


@dataclass
class StepCost:
    """Decayed least-squares fit of a decode step's seconds as a + b·rows."""

    decay: float = 0.97
    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0
    # Seconds of one draft-model round (one draft token for every drafting sequence).
    draft_round: float | None = None

    def observe(self, rows: int, seconds: float) -> None:
        d = self.decay
        self.w = self.w * d + 1.0
        self.sx = self.sx * d + rows
        self.sy = self.sy * d + seconds
        self.sxx = self.sxx * d + rows * rows
        self.sxy = self.sxy * d + rows * seconds
        self.syy = self.syy * d + seconds * seconds

    def observe_draft(self, seconds_per_round: float) -> None:
        prev = self.draft_round
        self.draft_round = (
            seconds_per_round if prev is None else 0.8 * prev + 0.2 * seconds_per_round
        )

    @property
    def known(self) -> bool:
        return self.w >= 3.0

    def fit(self) -> tuple[float, float]:
        """(a, b): the fixed and the per-row seconds of a step, b pessimistic.

        b is the fitted slope plus two standard errors, so that timing noise (a busy
        machine) makes rows look dear, not cheap; with too little spread in the row counts
        seen so far, b is the whole mean step over mean rows (a row costs a token).
        """
        if self.w <= 0:
            return 0.0, 1.0
        w = self.w
        mx, my = self.sx / w, self.sy / w
        var = self.sxx / w - mx * mx
        if var < 0.02:
            return 0.0, my / max(mx, 1.0)
        cov = self.sxy / w - mx * my
        slope = cov / var
        resid = max(self.syy / w - my * my - slope * cov, 0.0)
        se = (resid / (var * max(w - 2.0, 1.0))) ** 0.5
        b = max(slope + 2.0 * se, 1e-6)
        a = max(my - b * mx, 0.0)
        return a, b


def expected_accepted(alpha: float, k: int) -> float:
    """Expected accepted drafts of k when each is accepted with probability α given the
    previous ones were."""
    if k <= 0:
        return 0.0
    if alpha >= 0.999:
        return float(k)
    return alpha * (1.0 - alpha**k) / (1.0 - alpha)


def best_draft_len(
    alpha: float, k_max: int, n_rows: int, cost: StepCost, per_draft: float = 0.0
) -> int:
    """The draft length (0: none) with the most expected tokens per second for the step.

    `n_rows`: rows the step has without this sequence's drafts; `per_draft`: extra seconds
    per drafted token spent outside the target's decode (a draft model's rounds).
    """
    a, b = cost.fit()
    plain = n_rows / (a + b * n_rows)
    best, best_rate = 0, plain * MARGIN
    for k in range(1, k_max + 1):
        rate = (n_rows + expected_accepted(alpha, k)) / (a + b * (n_rows + k) + per_draft * k)
        if rate > best_rate:
            best, best_rate = k, rate
    return best


@dataclass
class Acceptance:
    """Decayed counts of accepted drafts and of rejections (one per verify that stopped early)."""

    accepted: float = 0.0
    rejected: float = 0.0

    def update(self, accepted: int, drafted: int, decay: float = 0.9) -> None:
        self.accepted = self.accepted * decay + accepted
        self.rejected = self.rejected * decay + (1.0 if accepted < drafted else 0.0)

    def alpha(self, prior: float, weight: float = 2.0) -> float:
        """Per-token acceptance: the geometric model's estimate, shrunk towards `prior`."""
        n = self.accepted + self.rejected
        return (self.accepted + prior * weight) / (n + weight)


@dataclass(eq=False)
class Speculation:
    """One sequence's speculative state: its n-gram index, draft in flight, acceptance."""

    source: str  # "ngram" or "draft"
    index: NgramIndex
    acceptance: Acceptance = field(default_factory=Acceptance)
    # Drafted tokens in this step's batch and their rows (rows[0] is the plain next token's).
    draft: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    # Slot length whose KV is valid for what was emitted so far (see Scheduler._finish).
    valid: int = -1
    steps: int = 0
    probe_at: int = 0
    probe_gap: int = PROBE_FIRST
    enabled: bool = True
    # Tokens the draft context holds for this sequence (draft-model speculation only).
    draft_tokens: list[int] = field(default_factory=list)

    def choose(
        self,
        k_avail: int,
        k_max: int,
        n_rows: int,
        cost: StepCost,
        prior: float,
        per_draft: float = 0.0,
    ) -> int:
        """How many drafts to verify this step (0: a plain step)."""
        self.steps += 1
        k_cap = min(k_avail, k_max)
        if k_cap <= 0:
            return 0
        if not cost.known:
            return min(k_cap, 2)  # the first steps measure the cost of rows
        k = best_draft_len(self.acceptance.alpha(prior), k_cap, n_rows, cost, per_draft)
        if k > 0:
            if not self.enabled:
                self.probe_gap = PROBE_FIRST  # it pays again: back to the short back-off
            self.enabled = True
            return k
        if self.enabled:  # it stopped paying: back off, then probe with one token
            self.enabled = False
            self.probe_at = self.steps + self.probe_gap
            return 0
        if self.steps >= self.probe_at:
            self.probe_gap = min(self.probe_gap * 2, PROBE_MAX)
            self.probe_at = self.steps + self.probe_gap
            return 1
        return 0
