"""`--lora` specs, and the round-robin over adapter sets that decide each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.engine.adapters.lora import AdapterSpec, StepTurns, split_model_name


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("a=x.gguf", AdapterSpec("a", Path("x.gguf"), 1.0, None)),
        ("a=x.gguf:0.5", AdapterSpec("a", Path("x.gguf"), 0.5, None)),
        ("m+a=/p/x.gguf:-2", AdapterSpec("a", Path("/p/x.gguf"), -2.0, "m")),
        ("a=C:/x.gguf", AdapterSpec("a", Path("C:/x.gguf"), 1.0, None)),  # a colon, no scale
        ("a=dir:x.gguf:3", AdapterSpec("a", Path("dir:x.gguf"), 3.0, None)),
    ],
)
def test_parse(text: str, spec: AdapterSpec) -> None:
    assert AdapterSpec.parse(text) == spec


@pytest.mark.parametrize("text", ["a", "=x", "a=", "+a=x", "m+=x", "a=x:inf", "a=x:1e9"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        AdapterSpec.parse(text)


def test_turns_take_every_set_in_order() -> None:
    turns = StepTurns(burst=1)
    a, b, none = (("a", 1.0),), (("b", 1.0),), ()
    picks = [turns.pick([a, none, b, a]) for _ in range(6)]
    assert picks == [none, a, b, none, a, b]
    assert turns.pick([b]) == b and turns.pick([a, b]) == a  # wraps past the end
    assert turns.pick([]) == ()


def test_a_set_keeps_its_turn_for_a_burst_while_it_has_work() -> None:
    """Each switch costs llama.cpp a graph reserve: a set serves `burst` steps in a row,
    then the next takes over; a set whose work ended hands over at once."""
    turns = StepTurns(burst=3)
    a, b, none = (("a", 1.0),), (("b", 1.0),), ()
    picks = [turns.pick([a, none, b]) for _ in range(9)]
    assert picks == [none] * 3 + [a] * 3 + [b] * 3
    assert turns.pick([a, none]) == none  # b is done: wraps to the first
    assert turns.pick([a]) == a  # none's work ended mid-burst


def test_split_model_name() -> None:
    assert split_model_name("m+a+b") == ("m", ["a", "b"])
    assert split_model_name("m") == ("m", [])


def test_adapters_belong_to_their_base_model() -> None:
    """No base: the default model; BASE (a file stem or an alias of it): that model only."""
    from daemon.config import embedded_model_path
    from daemon.engine.loading.loaded import EngineOptions
    from daemon.engine.loading.registry import ModelRegistry

    path = embedded_model_path()
    reg = ModelRegistry(path, EngineOptions(), aliases={"smol": path.stem})
    specs = [
        AdapterSpec.parse("plain=a.gguf"),
        AdapterSpec.parse("smol+aliased=b.gguf"),
        AdapterSpec.parse(f"{path.stem}+stem=c.gguf"),
        AdapterSpec.parse("other+elsewhere=d.gguf"),
    ]
    reg.adapter_specs = tuple(specs)
    assert [s.name for s in reg.adapters_of(path.stem)] == ["plain", "aliased", "stem"]
    assert [s.name for s in reg.adapters_of("other")] == ["elsewhere"]
    assert reg.resolve(f"{path.stem}+plain").name == path.stem
    assert reg.resolve("smol+plain").alias_of == path.stem
