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

Why it never costs. Each verification row costs time (on a CPU nearly a token's worth), and
with one KV stream per sequence llama.cpp splits a step whose sequences bring unequal row
counts into several micro-batches, each a full pass over the weights (`micro_batches`).
`StepCost` fits the measured time of decode steps as a·passes + b·rows, one fit per context
length class (`CostsByContext`: a row over 1,200 cells costs several times one over 100,
and on a CPU a lone row over a long context takes a faster kernel than several); each sequence
estimates its per-token acceptance α; a sequence drafts k tokens only when the expected
tokens per second of the whole step, (N + E_k) / (T + extra + draft time), beats N / T,
where T is the step without its drafts, extra what its k rows and any pass they add cost
(taken two standard errors high) and E_k = α(1 − α^k)/(1 − α). A sequence for which no k
pays stops drafting and re-probes with one token after a back-off that doubles (16 … 256 of
its steps) while probes keep failing; a probe waits for a step where it adds no pass.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def micro_batches(counts: dict[int, int]) -> int:
    """How many micro-batches llama.cpp runs for a step with `counts` rows per sequence.

    With one KV stream per sequence (edged's contexts), llama.cpp's `split_equal` builds each
    micro-batch from the run of consecutive sequence ids starting at the first sequence with
    rows left, taking the same number of rows (the run's fewest left) from each. So one
    sequence verifying drafts beside others decoding one row costs a whole second pass over
    the weights: on a CPU about as much as the step itself.
    """
    left = sorted((seq, n) for seq, n in counts.items() if n > 0)
    passes = 0
    while left:
        run = 1
        while run < len(left) and left[run][0] == left[run - 1][0] + 1:
            run += 1
        take = min(n for _, n in left[:run])
        left = [(seq, n - take) for seq, n in left[:run] if n > take] + left[run:]
        passes += 1
    return passes


@dataclass
class StepShape:
    """Rows per sequence of the step being planned (plain rows first, drafts as decided)."""

    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def plain(cls, seqs: Iterable[int]) -> StepShape:
        return cls({seq: 1 for seq in seqs})

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def passes(self) -> int:
        return micro_batches(self.counts)

    def passes_with(self, seq: int, k: int) -> int:
        """Micro-batches of the step with `k` more rows of `seq`."""
        grown = dict(self.counts)
        grown[seq] = grown.get(seq, 0) + k
        return micro_batches(grown)

    def extra_passes(self, seq: int, k: int) -> int:
        """Micro-batches that `k` more rows of `seq` would add to the step."""
        return self.passes_with(seq, k) - self.passes

    def add(self, seq: int, k: int) -> None:
        self.counts[seq] = self.counts.get(seq, 0) + k


@dataclass
class StepCost:
    """Decayed least-squares fit of a decode step's seconds as a·passes + b·rows.

    `a` is what one micro-batch costs whatever its size (on a CPU: reading the weights),
    `b` what each row adds. With a single pass per step this is the plain a + b·rows line.
    """

    decay: float = 0.97
    w: float = 0.0
    sr: float = 0.0  # rows
    sy: float = 0.0  # seconds
    suu: float = 0.0
    sur: float = 0.0
    srr: float = 0.0
    suy: float = 0.0
    sry: float = 0.0
    syy: float = 0.0
    # Seconds of one draft-model round (one draft token for every drafting sequence).
    draft_round: float | None = None
    # `_solve`'s answer until the next observation (a step asks for it once per draft length).
    _fit: tuple[float, float, float, float, float] | None = field(default=None, repr=False)
    _stale: bool = field(default=True, repr=False)

    def observe(self, rows: int, seconds: float, passes: int = 1) -> None:
        d = self.decay
        u, r, y = float(passes), float(rows), seconds
        self._stale = True
        self.w = self.w * d + 1.0
        self.sr = self.sr * d + r
        self.sy = self.sy * d + y
        self.suu = self.suu * d + u * u
        self.sur = self.sur * d + u * r
        self.srr = self.srr * d + r * r
        self.suy = self.suy * d + u * y
        self.sry = self.sry * d + r * y
        self.syy = self.syy * d + y * y

    def observe_draft(self, seconds_per_round: float) -> None:
        prev = self.draft_round
        self.draft_round = (
            seconds_per_round if prev is None else 0.8 * prev + 0.2 * seconds_per_round
        )

    @property
    def known(self) -> bool:
        return self.w >= 3.0

    def _solve(self) -> tuple[float, float, float, float, float] | None:
        """(a, b, var_a, cov_ab, var_b) of the fit, or None where passes and rows cannot be
        told apart (too little spread in what was seen)."""
        if self._stale:
            self._fit, self._stale = self._least_squares(), False
        return self._fit

    def _least_squares(self) -> tuple[float, float, float, float, float] | None:
        w = self.w
        if w <= 0:
            return None
        det = self.suu * self.srr - self.sur * self.sur
        # With one pass per step det/w² is the variance of the row count.
        if det / (w * w) < 0.02:
            return None
        a = (self.srr * self.suy - self.sur * self.sry) / det
        b = (self.suu * self.sry - self.sur * self.suy) / det
        ssr = (
            self.syy
            - 2.0 * (a * self.suy + b * self.sry)
            + a * a * self.suu
            + 2.0 * a * b * self.sur
            + b * b * self.srr
        )
        s2 = max(ssr, 0.0) / max(w - 2.0, 1.0)
        return a, b, s2 * self.srr / det, -s2 * self.sur / det, s2 * self.suu / det

    def fit(self) -> tuple[float, float]:
        """(a, b): the seconds of one micro-batch and of one row (point estimates, >= 0).

        With too little spread in what was seen, a = 0 and b is the mean step over its mean
        rows: a row is taken to cost a token.
        """
        sol = self._solve()
        if sol is None:
            return 0.0, self.sy / max(self.sr, 1.0) if self.w > 0 else 1.0
        a, b = sol[0], sol[1]
        return max(a, 0.0), max(b, 1e-6)

    def step(self, passes: int, rows: int) -> float:
        """The expected seconds of a step."""
        a, b = self.fit()
        return a * passes + b * rows

    def extra(self, passes: int, rows: int) -> float:
        """Seconds that `passes` more micro-batches and `rows` more rows add, taken two
        standard errors high: timing noise (a busy machine) makes extra work look dear,
        never cheap. Unfit, a micro-batch costs a whole mean step and a row a token."""
        sol = self._solve()
        if sol is None:
            if self.w <= 0:
                return float("inf")
            mean_step = self.sy / self.w
            return passes * mean_step + rows * self.sy / max(self.sr, 1.0)
        a, b, vaa, vab, vbb = sol
        mean = max(a, 0.0) * passes + max(b, 1e-6) * rows
        var = passes * passes * vaa + 2.0 * passes * rows * vab + rows * rows * vbb
        return mean + 2.0 * max(var, 0.0) ** 0.5


def context_bucket(cells: int) -> int:
    """The KV length class a step's cost is learnt under: 0 below 256 cells, then each
    doubling (256, 512, 1024 ...). What a verification row costs depends on how many cells
    its attention reads, and on a CPU with flash attention a lone row over 512 or more cells
    takes a threaded kernel that several rows do not: a fit learnt on short contexts says
    nothing of a long one."""
    return 0 if cells < 256 else 1 << (cells.bit_length() - 1)


@dataclass
class CostsByContext:
    """One `StepCost` per context bucket (see `context_bucket`), learnt separately."""

    fits: dict[int, StepCost] = field(default_factory=dict)

    def at(self, cells: int) -> StepCost:
        """The fit for steps whose longest sequence holds `cells` KV cells."""
        return self.fits.setdefault(context_bucket(cells), StepCost())


def expected_accepted(alpha: float, k: int) -> float:
    """Expected accepted drafts of k when each is accepted with probability α given the
    previous ones were."""
    if k <= 0:
        return 0.0
    if alpha >= 0.999:
        return float(k)
    return alpha * (1.0 - alpha**k) / (1.0 - alpha)


def best_draft_len(
    alpha: float,
    k_max: int,
    shape: StepShape,
    seq: int,
    cost: StepCost,
    per_draft: float = 0.0,
) -> int:
    """The draft length (0: none) with the most expected tokens per second for the step.

    `shape`: the step's rows so far (plain rows, earlier sequences' drafts); `seq`: the
    sequence that would draft; `per_draft`: extra seconds per drafted token spent outside
    the target's decode (a draft model's rounds).
    """
    n_rows, passes = shape.rows, shape.passes
    base = cost.step(passes, n_rows)
    if base <= 0.0:
        return 0
    best, best_rate = 0, n_rows / base * MARGIN
    for k in range(1, k_max + 1):
        t = base + cost.extra(shape.passes_with(seq, k) - passes, k) + per_draft * k
        rate = (n_rows + expected_accepted(alpha, k)) / t
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
        shape: StepShape,
        seq: int,
        cost: StepCost,
        prior: float,
        per_draft: float = 0.0,
    ) -> int:
        """How many drafts of sequence `seq` to verify this step (0: a plain step)."""
        self.steps += 1
        k_cap = min(k_avail, k_max)
        if k_cap <= 0:
            return 0
        if not cost.known:
            # The first steps measure the cost of rows, never at the price of a pass.
            k = min(k_cap, 2)
            return k if shape.extra_passes(seq, k) == 0 else 0
        k = best_draft_len(self.acceptance.alpha(prior), k_cap, shape, seq, cost, per_draft)
        if k > 0:
            if not self.enabled:
                self.probe_gap = PROBE_FIRST  # it pays again: back to the short back-off
            self.enabled = True
            return k
        if self.enabled:  # it stopped paying: back off, then probe with one token
            self.enabled = False
            self.probe_at = self.steps + self.probe_gap
            return 0
        # A probe waits for a step where its row adds no micro-batch (the sequence decodes
        # alone, or beside drafts as long): otherwise one probe costs about a whole step.
        if self.steps >= self.probe_at and shape.extra_passes(seq, 1) == 0:
            self.probe_gap = min(self.probe_gap * 2, PROBE_MAX)
            self.probe_at = self.steps + self.probe_gap
            return 1
        return 0
