"""The two decoding contracts an engine test can run under: `--exact` and the fast default.

The daemon maps its settings to these (daemon/app.py): without `--exact`, flash attention is
on and slots and the prompt cache reuse every held token, the previous reply's included.
Tests of request meetings (continuation, n > 1, beams, hang-up, timeout, isolation) run
under both, so the default users get is the one tested.

Where those tests compare tokens bit for bit under the fast default too, the equality holds
by construction, not by luck: a continuation restores the kept KV bytes and goes on one row
per step as the uninterrupted run does, and decode rows of several sequences (n > 1, beams,
neighbours in a batch) stay under 64 query rows, where llama.cpp's CPU flash attention takes
each row alone. What the fast default gives up is the equality of KV decoded row by row with
the same tokens prefilled as a chunk (the prompt cache's and slot reuse's meetings keep
their bit-exact comparisons under `--exact` only: tests/integration/test_prompt_cache.py).
"""

from __future__ import annotations

from typing import Any

MODES: dict[str, dict[str, Any]] = {
    "exact": {"exact": True},
    "fast": {"exact": False, "flash_attn": True},
}
