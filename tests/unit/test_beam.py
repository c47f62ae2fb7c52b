"""Beam search bookkeeping on hand-made log-probabilities (no model)."""

import numpy as np

from daemon.engine.decode.beam import BeamSearch, log_softmax, repetition_penalize

EOS = 3


def rows(*probs: list[float]) -> list[np.ndarray]:
    return [np.log(np.asarray(p, dtype=np.float64)) for p in probs]


def test_log_softmax_normalizes() -> None:
    lp = log_softmax(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert np.isclose(np.exp(lp).sum(), 1.0)


def test_keeps_best_paths_not_best_tokens() -> None:
    """Greedy would take token 0 (0.5); the path through token 1 is better overall."""
    bs = BeamSearch(2, length_penalty=1.0, eos=frozenset({EOS}), max_new_tokens=2)
    parents = bs.step(rows([0.5, 0.4, 0.05, 0.05]))
    assert parents == [(0, 0), (0, 1)]
    bs.step(rows([0.3, 0.3, 0.3, 0.1], [0.05, 0.9, 0.03, 0.02]))
    assert bs.done
    best = bs.best()
    assert best.tokens == [1, 1]
    assert np.isclose(best.sum_logprobs, np.log(0.4) + np.log(0.9))


def test_eos_finishes_when_no_running_beam_can_win() -> None:
    bs = BeamSearch(2, length_penalty=0.0, eos=frozenset({EOS}), max_new_tokens=5)
    bs.step(rows([0.6, 0.3, 0.05, 0.05]))
    bs.step(rows([0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]))
    # Both beams ended, and the best running beam (0.06) cannot beat the worse (0.21).
    assert bs.done
    assert [h.tokens for h in bs.finished] == [[0], [1]]
    assert all(h.ended for h in bs.finished)
    assert np.isclose(bs.best().normalized, np.log(0.6) + np.log(0.7))


def test_length_penalty_keeps_searching_for_longer_hypotheses() -> None:
    """HF scoring: with length_penalty 1 a running beam normalized by its length may still win."""
    bs = BeamSearch(2, length_penalty=1.0, eos=frozenset({EOS}), max_new_tokens=5)
    bs.step(rows([0.6, 0.3, 0.05, 0.05]))
    bs.step(rows([0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]))
    assert len(bs.finished) == 2
    assert not bs.done


def test_repetition_penalty_hf_semantics() -> None:
    logits = np.array([2.0, -2.0, 1.0])
    out = repetition_penalize(logits, [0, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
