"""Log-probabilities of tokens under the model's raw distribution."""

from __future__ import annotations

import numpy as np

from daemon.engine.decode.beam import log_softmax
from daemon.engine.types import TokenLogprob


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability in a logits row, with the `top` most likely alternatives."""
    lp = log_softmax(logits)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        k = min(top, lp.size)
        idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        alternatives = tuple((int(i), float(lp[i])) for i in idx)
    return TokenLogprob(token, float(lp[token]), alternatives)
