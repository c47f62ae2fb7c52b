"""LoRA adapters of a model: the `--lora` spec, the loaded set, and a request's adapter set.

llama.cpp applies adapters to a whole context, not to a sequence. A request's adapters are
therefore a value (`AdapterSet`: sorted (name, scale) pairs, zero scales dropped) that the
scheduler groups decode steps by, and that keys every piece of KV a request leaves behind
(slot prefixes, request_id entries): KV computed under one set never serves another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.engine.errors import InvalidInput
from daemon.engine.native.llama import Adapter, Context, Model
from daemon.engine.types import GenerationRequest

AdapterSet = tuple[tuple[str, float], ...]
NO_ADAPTERS: AdapterSet = ()
MAX_SCALE = 100.0


@dataclass(frozen=True)
class AdapterSpec:
    """`--lora [BASE+]NAME=PATH[:SCALE]`: an adapter GGUF, its name and its default scale."""

    name: str
    path: Path
    scale: float = 1.0
    base: str | None = None  # the model it belongs to; None = the default model

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        """Parse one `--lora` value; ValueError names what is wrong."""
        key, sep, rest = text.partition("=")
        if not sep or not key or not rest:
            raise ValueError(f"--lora wants [BASE+]NAME=PATH[:SCALE], got {text!r}")
        base, plus, name = key.rpartition("+")
        if plus and not base:
            raise ValueError(f"--lora {text!r}: empty base model name before '+'")
        if not name or "+" in name:
            raise ValueError(f"--lora {text!r}: empty adapter name")
        path, scale = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon and head:
            try:
                scale = float(tail)
            except ValueError:
                pass  # a colon inside the path (a Windows drive, an odd name), no scale
            else:
                path = head
        if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
            raise ValueError(f"--lora {text!r}: scale must be finite, at most {MAX_SCALE:g}")
        return cls(name, Path(path).expanduser(), scale, base or None)


class Adapters:
    """The adapters loaded for one model, by name, in `--lora` order."""

    def __init__(self, model: Model, specs: Iterable[AdapterSpec]) -> None:
        self.specs: dict[str, AdapterSpec] = {}
        self.loaded: dict[str, Adapter] = {}
        try:
            for spec in specs:
                if spec.name in self.specs:
                    raise InvalidInput(f"adapter name {spec.name!r} is given twice")
                self.loaded[spec.name] = Adapter(model, spec.path)
                self.specs[spec.name] = spec
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        """Adapter names in the order they were given (llama-server's `id` is the index)."""
        return list(self.specs)

    def resolve(self, wanted: Iterable[tuple[str, float | None]]) -> AdapterSet:
        """A request's adapter set: unknown names are a 400; a missing scale is the adapter's
        default; a name given twice is refused rather than guessed."""
        out: dict[str, float] = {}
        for name, scale in wanted:
            spec = self.specs.get(name)
            if spec is None:
                known = ", ".join(self.specs) or "none are loaded"
                raise InvalidInput(
                    f"unknown LoRA adapter {name!r} (known: {known})", subject="lora"
                )
            if name in out:
                raise InvalidInput(f"LoRA adapter {name!r} is named twice", subject="lora")
            out[name] = spec.scale if scale is None else float(scale)
        return tuple(sorted((n, s) for n, s in out.items() if s != 0.0))

    def pointers(self, adapters: AdapterSet) -> list[tuple[Adapter, float]]:
        """What Context.set_adapters takes for this set."""
        return [(self.loaded[name], scale) for name, scale in adapters]

    def close(self) -> None:
        """Free every adapter (before the model)."""
        for adapter in self.loaded.values():
            adapter.close()
        self.loaded.clear()


def describe(adapters: AdapterSet) -> str:
    """A set as people read it: `name@scale, ...` or `none`."""
    return ", ".join(f"{n}@{s:g}" for n, s in adapters) or "none"


# Steps a set keeps its turn while others wait: each switch makes llama.cpp 0.3.36 reserve
# its compute graph anew (~7 ms against a 15 ms step of the default model on 2 cores), so
# switching every step cost 2/5 of mixed-set throughput (bench/lora.py).
TURN_STEPS = 4


class StepTurns:
    """Which adapter set the next decode step serves: one set per llama_decode, the sets
    with work taking turns (round-robin in sorted order, `burst` steps each), so none
    starves."""

    def __init__(self, burst: int = TURN_STEPS) -> None:
        self.burst = burst
        self.last: AdapterSet | None = None
        self.run = 0

    def pick(self, sets: Iterable[AdapterSet]) -> AdapterSet:
        """The set being served, for up to `burst` steps while it has work; then the next
        one present (wrapping around)."""
        distinct = sorted(set(sets))
        if not distinct:
            return NO_ADAPTERS
        if self.last in distinct and self.run < self.burst:
            self.run += 1
            return self.last
        if self.last is not None:
            later = [s for s in distinct if s > self.last]
            chosen = later[0] if later else distinct[0]
        else:
            chosen = distinct[0]
        self.last, self.run = chosen, 1
        return chosen


class AdapterSteps:
    """A scheduler's adapter state: the set applied to its context and whose turn is next."""

    def __init__(self, adapters: Adapters | None) -> None:
        self.adapters = adapters
        self.applied: AdapterSet = NO_ADAPTERS
        self.turns = StepTurns()
        self.switches = 0

    def check(self, req: GenerationRequest) -> None:
        """Adapters this model has, and a continuation only under the set its KV was made with."""
        known = self.adapters.specs if self.adapters is not None else {}
        unknown = [n for n, _ in req.lora if n not in known]
        if unknown:
            raise InvalidInput(f"unknown LoRA adapter {unknown[0]!r}", subject="lora")
        if req.resume is not None and req.resume.lora != req.lora:
            raise InvalidInput(
                f"this sequence was generated with LoRA {describe(req.resume.lora)}; continue "
                f"it with the same adapters, not {describe(req.lora)}",
                subject="lora",
            )

    def serve(self, ctx: Context, sets: Iterable[AdapterSet]) -> AdapterSet:
        """Pick the set this step serves among `sets` and apply it to `ctx`."""
        lora = self.turns.pick(sets)
        if lora != self.applied:
            ctx.set_adapters(self.adapters.pointers(lora) if self.adapters is not None else [])
            self.applied = lora
            self.switches += 1
        return lora


def split_model_name(name: str) -> tuple[str, list[str]]:
    """`BASE+A+B` as (BASE, [A, B]): a model alias that turns adapters on at their scales."""
    base, *names = name.split("+")
    return base, names
