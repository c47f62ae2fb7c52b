"""llama-server's `__verbose`: what the daemon made of one choice of a request, for debugging
a client (the prompt as the template rendered it, the tokens, the settings it ran with).

A request asks with `verbose: true`; `--verbose` makes it every request's default. It only
ever shows the requester its own request: the rendered prompt is built from what it sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from daemon.core.choices import timings
from daemon.core.streams import Collected
from daemon.engine.handle import RequestHandle
from daemon.engine.types import FinishReason


def stop_fields(
    detokenize: Callable[[list[int]], str], r: Collected, stops: Sequence[str]
) -> dict[str, str]:
    """`stop_type` and `stopping_word`: a stop string, the end-of-generation token, or the
    limit (llama-server's names)."""
    if r.finish_reason is FinishReason.LENGTH:
        return {"stop_type": "limit", "stopping_word": ""}
    if r.finish_reason is not FinishReason.STOP:
        return {"stop_type": "none", "stopping_word": ""}
    # The text ends before a matched stop string; what was generated past it names the word.
    rest = detokenize(r.token_ids)[len(r.text) :]
    word = next((s for s in stops if s and rest.startswith(s)), None)
    if word is None:
        word = next((s for s in stops if s and s in rest), None)
    if word is not None:
        return {"stop_type": "word", "stopping_word": word}
    return {"stop_type": "eos", "stopping_word": ""}


def verbose_of(
    index: int,
    prompt: str,
    handle: RequestHandle,
    result: Collected,
    detokenize: Callable[[list[int]], str],
) -> dict[str, Any]:
    """The `__verbose` object of choice `index`: llama-server's native completion fields."""
    u = handle.usage
    req = handle.request
    settings = {k: v for k, v in asdict(req.sampling).items() if k != "logit_bias"}
    settings["logit_bias"] = [list(pair) for pair in req.sampling.logit_bias]
    settings.update(n_predict=req.max_tokens, stop=list(req.stop))
    return {
        "index": index,
        "content": result.text,
        "tokens": list(result.token_ids),
        "prompt": prompt,
        "tokens_predicted": u.completion_tokens,
        "tokens_evaluated": u.prompt_tokens,
        # llama-server's meaning: the tokens the sequence's KV holds when it ends.
        "tokens_cached": u.prompt_tokens + u.completion_tokens,
        "stop": True,
        **stop_fields(detokenize, result, req.stop),
        "has_new_line": "\n" in result.text,
        "generation_settings": settings,
        "timings": timings([handle]),
    }
