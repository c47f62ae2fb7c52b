"""One mapping from any dialect's sampling fields to the engine's, with a table of names.

Dialects call the same knob by different names (`repeat_penalty` on llama.cpp's APIs,
`repetition_penalty` on OpenAI's, `stop_sequences` on Anthropic's): each has a `Names` table,
and `sampling_of` reads a validated body through it. Two llama.cpp conventions are applied
here once for all: a negative seed means "random", and a penalty window of -1 means the
whole context.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from daemon.engine.types import SamplingParams


@dataclass(frozen=True)
class Names:
    """What a dialect calls each sampling input (None: the dialect has no such field)."""

    temperature: str | None = "temperature"
    top_p: str | None = "top_p"
    top_k: str | None = "top_k"
    min_p: str | None = "min_p"
    typical_p: str | None = "typical_p"
    repetition_penalty: str | None = "repetition_penalty"
    presence_penalty: str | None = "presence_penalty"
    frequency_penalty: str | None = "frequency_penalty"
    seed: str | None = "seed"
    logit_bias: str | None = "logit_bias"
    penalty_last_n: str | None = None
    stop: str | None = "stop"
    lora: str | None = "lora"
    # HF's `do_sample: false` is greedy whatever the temperature says.
    do_sample: str | None = None


OPENAI = Names()
LLAMA_CPP = Names(repetition_penalty="repeat_penalty", penalty_last_n="repeat_last_n")
ANTHROPIC = Names(
    min_p=None,
    typical_p=None,
    repetition_penalty=None,
    presence_penalty=None,
    frequency_penalty=None,
    seed=None,
    logit_bias=None,
    stop="stop_sequences",
)
HF_GENERATE = Names(
    min_p=None,
    typical_p=None,
    presence_penalty=None,
    frequency_penalty=None,
    seed=None,
    logit_bias=None,
    stop=None,
    lora=None,
    do_sample="do_sample",
)

_DEFAULTS = SamplingParams()
_ENGINE_FIELDS = frozenset(f.name for f in fields(SamplingParams))


@dataclass(frozen=True)
class Sampling:
    """A request's sampling: the engine's parameters, its stop strings, its adapters."""

    params: SamplingParams = _DEFAULTS
    stops: tuple[str, ...] = ()
    lora: tuple[Any, ...] | None = None  # the dialect's adapter refs (`.name`, `.scale`)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else list(value)
    return tuple(s for s in stops if s)


def _bias(value: Any) -> tuple[tuple[int, float], ...]:
    if not value:
        return ()
    pairs = value.items() if isinstance(value, dict) else value
    return tuple((int(k), float(b)) for k, b in pairs)


def sampling_of(body: Any, names: Names, *, n_ctx: int = 0, **given: Any) -> Sampling:
    """`body`'s sampling read through `names`; `given` values win over the body's (for
    fields a dialect keeps outside the body it passes, such as Ollama's `lora`).

    A field the body lacks, or holds as None, keeps the engine's default.
    """

    def read(field: str) -> Any:
        if field in given:
            return given[field]
        name = getattr(names, field)
        return None if name is None else getattr(body, name, None)

    values: dict[str, Any] = {}
    for f in _ENGINE_FIELDS & {f.name for f in fields(Names)}:
        v = read(f)
        if v is not None:
            values[f] = v
    if "logit_bias" in values:
        values["logit_bias"] = _bias(values["logit_bias"])
    seed = values.get("seed")
    if seed is not None and seed < 0:
        del values["seed"]  # llama.cpp's -1: a random seed, as none is
    window = values.get("penalty_last_n")
    if window is not None and window < 0:
        values["penalty_last_n"] = n_ctx
    if read("do_sample") is False:
        values["temperature"] = 0.0
    lora = read("lora")
    return Sampling(
        replace(_DEFAULTS, **values), _stops(read("stop")), None if lora is None else tuple(lora)
    )
