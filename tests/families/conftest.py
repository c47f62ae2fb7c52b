"""Shared helpers of the family tests: the copied templates, every chunking of a text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def template(name: str) -> str:
    """A copied chat template's text (tests/families/templates/NAME.jinja)."""
    return (TEMPLATES / f"{name}.jinja").read_text()


def chunkings(text: str) -> Iterator[list[str]]:
    """The text whole, cut at every single point, and char by char."""
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)


def turn(
    plan: object, source: str, pieces: list[str], started: bool = False
) -> tuple[str, str, list[tuple[str, str]]]:
    """Output pieces through the turn parser of a template's family: (reasoning, content,
    [(name, arguments)])."""
    from daemon.core.calls import ToolCall
    from daemon.core.reasoning import Thinking, detect
    from daemon.core.turns import Reasoning, TurnParser

    style = detect(source)
    think = None if style is None else Thinking(style, started)
    parser = TurnParser(plan, think)  # type: ignore[arg-type]
    events = [e for p in pieces for e in parser.push(p)] + parser.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    content = "".join(e for e in events if isinstance(e, str))
    calls = [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)]
    return reasoning, content, calls
