"""`/inference`: the legacy Together response shape around the shared engine."""

from __future__ import annotations

import time
from typing import Any

from daemon.api.keepalive import keep_alive_arg
from daemon.api.together.protocol import InferenceRequest
from daemon.core.choices import Policy, submit_choices
from daemon.core.sampling import OPENAI, sampling_of
from daemon.core.streams import collect_all
from daemon.core.watch import leased
from daemon.engine.loading.registry import ModelRegistry


async def inference(
    registry: ModelRegistry, req: InferenceRequest, args: dict[str, Any], limits: Policy
) -> dict[str, Any]:
    """Run `n` completions of one prompt; answer in seed 000's shape."""
    start = time.perf_counter()
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    prompt = lm.tokenize(req.prompt)
    sampling = sampling_of(req, OPENAI)  # Together names its fields as OpenAI does
    handles = submit_choices(lm, [prompt], req.max_tokens, sampling, req.n, limits)
    results = await collect_all(handles)
    choices = [
        {"finish_reason": r.finish_reason.value, "index": i, "text": r.text}
        for i, r in enumerate(results)
    ]
    return {
        "status": "finished",
        "prompt": [req.prompt],
        "model": registry.answering_name(req.model, lm.name),
        "model_owner": "",
        "tags": {},
        "num_returns": req.n,
        "args": args,
        "subjobs": [],
        "output": {
            "choices": choices,
            "raw_compute_time": time.perf_counter() - start,
            "result_type": "language-model-inference",
        },
    }
