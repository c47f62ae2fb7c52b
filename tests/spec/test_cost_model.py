"""The pure parts of speculative decoding: n-gram lookup, the step-cost fit, the policy."""

from __future__ import annotations

import pytest

from daemon.engine.speculation.speculate import (
    PROBE_FIRST,
    CostsByContext,
    NgramIndex,
    Speculation,
    StepCost,
    StepShape,
    best_draft_len,
    context_bucket,
    expected_accepted,
    micro_batches,
)

ONE = StepShape.plain([0])  # a lone sequence decoding one row


def test_ngram_drafts_the_continuation_of_the_latest_earlier_occurrence() -> None:
    idx = NgramIndex(2, 3)
    idx.extend([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # The tail (1, 2, 3) occurred at the start followed by 4 5 9; longest match wins.
    assert idx.draft(3) == [4, 5, 9]
    idx.extend([6])
    assert idx.draft(4) == []  # (2, 3, 6) and (3, 6) never occurred before
    idx.extend([2, 3])
    # (6, 2, 3) is new; (2, 3) last occurred before the 6: its follower was 6.
    assert idx.draft(2) == [6, 2]
    assert idx.draft(0) == []


def test_ngram_draft_never_reads_past_the_history() -> None:
    idx = NgramIndex(2, 4)
    idx.extend([5, 6, 5, 6])
    assert idx.draft(8) == [5, 6]


def _cost(a: float, b: float) -> StepCost:
    c = StepCost()
    for rows in (1, 2, 4, 8, 1, 3, 6, 2) * 4:
        c.observe(rows, a + b * rows)
    return c


def test_step_cost_fit_recovers_fixed_and_per_row_seconds() -> None:
    a, b = _cost(0.010, 0.002).fit()
    assert a == pytest.approx(0.010, rel=1e-6)
    assert b == pytest.approx(0.002, rel=1e-6)


def test_without_row_spread_a_row_is_assumed_to_cost_a_whole_step() -> None:
    c = StepCost()
    for _ in range(10):
        c.observe(1, 0.02)
    assert c.fit() == pytest.approx((0.0, 0.02))
    # Then drafting never pays, however good the acceptance.
    assert best_draft_len(0.99, 8, ONE, 0, c) == 0
    # And a pass it would add is charged a whole mean step.
    assert c.extra(1, 0) == pytest.approx(0.02)


def test_drafting_pays_only_when_rows_are_cheap_or_acceptance_high() -> None:
    gpu_like = _cost(0.020, 0.0005)  # a row costs 2.5 % of a step
    cpu_like = _cost(0.004, 0.008)  # a row costs two thirds of a step (this machine)
    assert best_draft_len(0.6, 8, ONE, 0, gpu_like) >= 3
    assert best_draft_len(0.6, 8, ONE, 0, cpu_like) == 0
    assert best_draft_len(0.95, 8, ONE, 0, cpu_like) >= 1
    # Eight rows already in the step make its fixed cost matter less: drafts pay less.
    assert best_draft_len(0.8, 8, StepShape.plain(range(8)), 0, cpu_like) == 0
    # A draft model's own time per token counts against it.
    assert best_draft_len(0.9, 8, ONE, 0, gpu_like, per_draft=0.030) == 0


def test_expected_accepted_is_geometric() -> None:
    assert expected_accepted(0.5, 1) == pytest.approx(0.5)
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(1.0, 4) == 4.0
    assert expected_accepted(0.3, 0) == 0.0


def test_a_sequence_that_stops_paying_backs_off_and_probes_with_one_token() -> None:
    cpu = _cost(0.004, 0.008)
    sp = Speculation("ngram", NgramIndex())
    for _ in range(20):
        sp.acceptance.update(0, 4)  # every draft rejected
    assert sp.choose(4, 8, ONE, 0, cpu, prior=0.5) == 0
    assert not sp.enabled
    ks = [sp.choose(4, 8, ONE, 0, cpu, prior=0.5) for _ in range(PROBE_FIRST * 3 + 4)]
    probes = [i for i, k in enumerate(ks) if k]
    assert all(ks[i] == 1 for i in probes)
    # First probe after the first gap, the next after a doubled one.
    assert probes[:2] == [PROBE_FIRST - 1, 3 * PROBE_FIRST - 1]


def test_noisy_timings_make_rows_look_dear_not_cheap() -> None:
    """On a busy machine step times scatter; the fitted per-row cost errs upwards."""
    import random

    rng = random.Random(5)
    quiet, noisy = StepCost(), StepCost()
    for _ in range(200):
        rows = rng.choice((1, 2, 3, 5))
        quiet.observe(rows, 0.010 + 0.001 * rows)
        noisy.observe(rows, (0.010 + 0.001 * rows) * rng.uniform(0.3, 3.0))
    assert quiet.fit()[1] == pytest.approx(0.001, rel=1e-3)
    assert quiet.extra(0, 1) == pytest.approx(0.001, rel=1e-3)
    assert noisy.extra(0, 1) > 0.001
    assert best_draft_len(0.7, 8, ONE, 0, quiet) > 0


def test_micro_batches_follow_llama_cpp_split_equal() -> None:
    """Each pass takes the same rows from a run of consecutive sequence ids."""
    assert micro_batches({0: 1, 1: 1, 2: 1, 3: 1}) == 1
    assert micro_batches({0: 3, 1: 3}) == 1
    assert micro_batches({0: 5}) == 1
    assert micro_batches({0: 2, 1: 1, 2: 1, 3: 1}) == 2  # one drafting beside three plain
    assert micro_batches({0: 4, 1: 2, 2: 1, 3: 1}) == 3
    assert micro_batches({0: 1, 2: 1}) == 2  # a gap in the sequence ids splits too
    assert micro_batches({}) == 0
    shape = StepShape.plain([0, 1, 2, 3])
    assert shape.extra_passes(0, 1) == 1
    shape.add(0, 3)
    assert shape.extra_passes(1, 3) == 0 and shape.extra_passes(1, 2) == 1


def test_step_cost_fit_separates_passes_from_rows() -> None:
    c = StepCost()
    for passes, rows in ((1, 1), (1, 4), (2, 5), (2, 8), (3, 6), (1, 2)) * 5:
        c.observe(rows, 0.040 * passes + 0.005 * rows, passes)
    assert c.fit() == pytest.approx((0.040, 0.005), rel=1e-6)
    assert c.extra(1, 2) == pytest.approx(0.050, rel=1e-6)


def test_a_draft_beside_other_streams_pays_only_when_it_adds_no_pass() -> None:
    """On a CPU a pass costs most of a step: one sequence's drafts beside three plain rows
    never pay, the same drafts for a lone sequence do, and a second sequence drafting as
    many rows as one already drafting adds no pass."""
    cpu = StepCost()
    for passes, rows in ((1, 1), (1, 4), (2, 5), (2, 8), (1, 3), (1, 2)) * 5:
        cpu.observe(rows, 0.040 * passes + 0.005 * rows, passes)
    four = StepShape.plain([0, 1, 2, 3])
    assert best_draft_len(0.9, 8, four, 0, cpu) == 0
    assert best_draft_len(0.9, 8, ONE, 0, cpu) >= 3
    four.add(0, 3)
    assert best_draft_len(0.9, 8, four, 1, cpu) == 3


def test_a_probe_waits_for_a_step_where_it_adds_no_pass() -> None:
    cpu = _cost(0.004, 0.008)
    sp = Speculation("ngram", NgramIndex())
    for _ in range(20):
        sp.acceptance.update(0, 4)
    four = StepShape.plain([0, 1, 2, 3])
    assert sp.choose(4, 8, four, 0, cpu, prior=0.5) == 0 and not sp.enabled
    ks = [sp.choose(4, 8, four, 0, cpu, prior=0.5) for _ in range(PROBE_FIRST * 3)]
    assert not any(ks)  # beside three plain rows a probe would cost a pass
    assert sp.choose(4, 8, ONE, 0, cpu, prior=0.5) == 1  # overdue: probes once it is cheap


def test_context_buckets_double_from_256_cells() -> None:
    assert [context_bucket(n) for n in (0, 255, 256, 511, 512, 1023, 1024, 1300, 5000)] == [
        0,
        0,
        256,
        256,
        512,
        512,
        1024,
        1024,
        4096,
    ]


def test_costs_learnt_on_short_contexts_do_not_judge_long_ones() -> None:
    """The regression behind speculation being opt-in: rows verified over a long context
    cost far more than over a short one (on the benchmark CPU, decode after a 1,200-token
    prompt fell to a third with ~98 % of drafts accepted). Each context class is fitted
    from its own steps, so drafting pays at 100 cells and stops at 1,200."""
    costs = CostsByContext()
    short = costs.at(100)
    for rows in (1, 3, 1, 3, 2, 1, 3) * 3:  # a row adds a fifth of a step
        short.observe(rows, 0.010 + 0.002 * rows)
    long = costs.at(1200)
    assert long is not short and not long.known  # nothing learnt there yet
    for rows in (1, 3, 1, 3, 2, 1, 3) * 3:  # lone row 13 ms, each extra row 25 ms
        long.observe(rows, 0.013 if rows == 1 else 0.013 + 0.025 * (rows - 1))
    assert costs.at(1100) is long and costs.at(300) is not short
    assert best_draft_len(0.98, 8, ONE, 0, short) > 0
    assert best_draft_len(0.98, 8, ONE, 0, long) == 0
