"""A stateful property test of the prompt cache on the real engine (issue 13).

Three API keys send prompts that are prefixes of one another (all starting with the same
system text) to two slots, with a cache small enough to evict. Invariants: every answer
(greedy tokens and log-probabilities) equals the cold answer of a cache-off model from an
empty slot; no request reports more cached tokens than its own key's earlier sequences
share with its prompt (no cross-key hit, at slot or cache level); the byte bound holds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from daemon.config import embedded_model_path
from daemon.engine.loaded import LoadedModel
from daemon.engine.slots import common_prefix
from tests.integration.test_prompt_cache import Answer, Cold, ask, options, request

KEYS = ("a", "b", "z")
SYSTEM = "System: you answer briefly about rivers, stones and gardens in the old town. " * 5
PARTS = (" The river is cold.", " Stones line the garden path.", " Lights glow at dusk.")
BOUND = 6 << 20  # about two cached prompts of this model: evictions happen

_models: dict[str, object] = {}


def models() -> tuple[LoadedModel, Cold]:
    if not _models:
        _models["warm"] = LoadedModel(
            "prop-cache", embedded_model_path(), options(cache_ram=BOUND, ctx_size=512)
        )
        _models["cold"] = Cold()
    return _models["warm"], _models["cold"]  # type: ignore[return-value]


def teardown_module() -> None:
    for m in _models.values():
        (m.lm if isinstance(m, Cold) else m).close()  # type: ignore[union-attr]
    _models.clear()


_cold_answers: dict[tuple[int, ...], Answer] = {}
# Every sequence each key's requests left behind (prompt + generated tokens), across
# examples: the warm model and its cache live through them all.
_seen: dict[str, list[list[int]]] = {k: [] for k in KEYS}


class PromptCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.warm, self.cold = models()

    @rule(
        key=st.sampled_from(KEYS),
        parts=st.lists(st.integers(0, len(PARTS) - 1), min_size=1, max_size=3),
    )
    def ask(self, key: str, parts: list[int]) -> None:
        prompt = self.warm.tokenize(SYSTEM + "".join(PARTS[i] for i in parts))
        got = ask(self.warm, request(prompt, key, n=3))
        ref = _cold_answers.get(tuple(prompt))
        if ref is None:
            ref = _cold_answers[tuple(prompt)] = self.cold(request(prompt, n=3))
        assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)
        own = max((common_prefix(s, prompt) for s in _seen[key]), default=0)
        assert got.cached <= own, (key, got.cached, own)
        _seen[key].append(prompt + got.tokens)

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
