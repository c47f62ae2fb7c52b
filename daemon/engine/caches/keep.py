"""What a request_id keeps between calls, built from the request's own slot."""

from __future__ import annotations

from collections.abc import Callable

from daemon.engine.decode.active import Active
from daemon.engine.decode.beam import BeamSearch, Sampling
from daemon.engine.decode.slots import seed32
from daemon.engine.media import is_stand_in
from daemon.engine.types import FinishReason, GenerationRequest, SavedSequence


def beam_search(req: GenerationRequest, eos: frozenset[int]) -> BeamSearch:
    """The search state for a beam request (HF semantics; beam-sample with do_sample)."""
    assert req.beams is not None
    sp = req.sampling
    sampling = (
        Sampling(sp.temperature, sp.top_k, sp.top_p, seed32(sp.seed))
        if req.beams.do_sample
        else None
    )
    return BeamSearch(
        req.beams.num_beams,
        length_penalty=req.beams.length_penalty,
        eos=eos,
        max_new_tokens=req.max_tokens,
        sampling=sampling,
    )


def saved_sequence(
    a: Active,
    reason: FinishReason,
    tok: int | None,
    best: list[int] | None,
    state_get: Callable[[int], bytes],
    model_id: str = "",
) -> SavedSequence | None:
    """What a later request needs to continue this one exactly (None: keep the old).

    Everything comes from `a`'s own slot, which it filled or restored itself.
    """
    held = b"" if reason is FinishReason.STOP else a.decode.detok.held()
    if a.beams is not None:
        if best is None:
            return None  # cut mid-search: no answer was chosen, keep the entry as it was
        full = a.slot.tokens[: a.base] + best
        return SavedSequence(
            tokens=tuple(full[:-1]),
            pending=tuple(full[-1:]),
            n_prompt=a.n_prompt,
            state=None,
            finished=reason is FinishReason.STOP,
            tail=held,
            lora=a.handle.request.lora,
            model_id=model_id,
        )
    if tok is not None:  # the last sampled token, not decoded yet
        pending = [tok]
    elif a.pending:  # cut before all its prompt was fed
        pending = list(a.pending)
    elif reason is FinishReason.CANCELLED and a.decode.next_token >= 0:
        pending = [a.decode.next_token]
    else:
        pending = []
    if a.fork.leader is not None:  # a sibling cut before its copy of the prompt arrived
        return None
    if any(is_stand_in(t) for t in pending):
        # Cut before an image or audio clip was decoded: its embeddings are not kept, so
        # nothing could feed those positions later. Keep the entry as it was.
        return None
    return SavedSequence(
        tokens=tuple(a.slot.tokens),
        pending=tuple(pending),
        n_prompt=a.n_prompt,
        state=state_get(a.slot.seq) if a.slot.tokens else None,
        finished=not pending,
        exact=a.slot.exact,
        tail=held,
        lora=a.handle.request.lora,
        model_id=model_id,
        jumps=a.slot.jumps,
    )
