"""A stateful property test of the prompt cache on the real engine (issue 13).

Three API keys send prompts that are prefixes of one another (all starting with the same
system text) to two slots, with a cache small enough to evict, with no adapter or under a
LoRA adapter (issue 25: state never crosses an adapter set). Invariants: every answer
(greedy tokens and log-probabilities) equals the cold answer of a cache-off model from an
empty slot; no request reports more cached tokens than its own key's earlier sequences
under the same adapter set share with its prompt (no cross-key or cross-adapter hit, at
slot or cache level); the byte bound holds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daemon.config import embedded_model_path
from daemon.engine.adapters.lora import AdapterSpec
from daemon.engine.decode.slots import common_prefix
from daemon.engine.loading.loaded import LoadedModel
from tests.integration.test_prompt_cache import Answer, Cold, ask, options, request

KEYS = ("a", "b", "z")
SYSTEM = "System: you answer briefly about rivers, stones and gardens in the old town. " * 5
PARTS = (" The river is cold.", " Stones line the garden path.", " Lights glow at dusk.")
BOUND = 6 << 20  # about two cached prompts of this model: evictions happen

_models: dict[str, object] = {}
_tmp: list[Path] = []
# The adapter sets a request may name: none, or the random adapter `a` at scale 1.
LORAS: tuple[tuple[tuple[str, float], ...], ...] = ((), (("a", 1.0),))


def _adapter() -> tuple[AdapterSpec, ...]:
    """A random attention LoRA of SmolLM2, converted to GGUF (as tests/lora builds them)."""
    from quantize.lora import convert_lora
    from tests.lora.peft import random_peft, smollm_config

    root = Path(tempfile.mkdtemp(prefix="edged-pc-lora-"))
    _tmp.append(root)
    base = root / "base"
    base.mkdir()
    cfg = smollm_config(embedded_model_path())
    (base / "config.json").write_text(json.dumps(cfg))
    peft = random_peft(root / "a", cfg, targets=("q_proj", "v_proj"), strength=0.3, seed=1)
    return (AdapterSpec("a", convert_lora(peft, root / "a.gguf", base, "f16", progress=False)),)


def models() -> tuple[LoadedModel, Cold]:
    if not _models:
        specs = _adapter()
        _models["warm"] = LoadedModel(
            "prop-cache", embedded_model_path(), options(cache_ram=BOUND, ctx_size=512), None, specs
        )
        cold = Cold.__new__(Cold)  # Cold's model, with the same adapter
        cold.lm = LoadedModel("cold", embedded_model_path(), options(cache_ram=0), None, specs)
        cold.flush = cold.lm.tokenize("Zz")
        _models["cold"] = cold
    return _models["warm"], _models["cold"]  # type: ignore[return-value]


def teardown_module() -> None:
    for m in _models.values():
        (m.lm if isinstance(m, Cold) else m).close()  # type: ignore[union-attr]
    _models.clear()
    for d in _tmp:
        shutil.rmtree(d, ignore_errors=True)


_cold_answers: dict[tuple[object, ...], Answer] = {}
# Every sequence each key's requests left behind (prompt + generated tokens) under each
# adapter set, across examples: the warm model and its cache live through them all.
_seen: dict[tuple[str, object], list[list[int]]] = {(k, a): [] for k in KEYS for a in LORAS}


class PromptCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.warm, self.cold = models()

    @rule(
        key=st.sampled_from(KEYS),
        parts=st.lists(st.integers(0, len(PARTS) - 1), min_size=1, max_size=3),
        lora=st.sampled_from(LORAS),
    )
    def ask(self, key: str, parts: list[int], lora: tuple[tuple[str, float], ...]) -> None:
        prompt = self.warm.tokenize(SYSTEM + "".join(PARTS[i] for i in parts))
        got = ask(self.warm, request(prompt, key, n=3, lora=lora))
        ref = _cold_answers.get((lora, *prompt))
        if ref is None:
            ref = _cold_answers[(lora, *prompt)] = self.cold(request(prompt, n=3, lora=lora))
        assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)
        own = max((common_prefix(s, prompt) for s in _seen[key, lora]), default=0)
        assert got.cached <= own, (key, lora, got.cached, own)
        _seen[key, lora].append(prompt + got.tokens)

    @invariant()
    def bounded(self) -> None:
        assert self.warm.generator().cache.nbytes <= BOUND

    def teardown(self) -> None:
        assert self.warm.generator().busy_slots == 0


TestPromptCacheMachine = PromptCacheMachine.TestCase
TestPromptCacheMachine.settings = settings(
    max_examples=3,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
