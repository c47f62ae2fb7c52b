"""Shared helpers of the family tests: the copied templates, every chunking of a text, and
one daemon serving the embedded model under several families' templates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server, stop_server
from tests.e2e.test_reasoning import make_thinking_gguf
from tests.families.markers import make_marker_gguf

# The published templates (sources and licences: tests/templates/corpus/README.md).
TEMPLATES = Path(__file__).parent.parent / "templates" / "corpus"
# alias -> the template it carries (each a different call syntax).
FAMILIES = {
    "qwen3coder": "Qwen3-Coder",
    "mistral": "Mistral-Small-3.2-24B-Instruct-2506",
    "gptoss": "openai-gpt-oss-120b",
    "deepseek": "deepseek-ai-DeepSeek-V3.1",
    "commandr": "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
}


def template(name: str) -> str:
    """A published chat template's text (tests/templates/corpus/NAME.jinja)."""
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


@pytest.fixture(scope="package")
def family_server(tmp_path_factory: pytest.TempPathFactory, smollm_gguf: Path) -> Iterator[Server]:
    """The daemon with each family's alias (and Mistral Nemo's on a vocabulary where
    `[TOOL_CALLS]` is one control token), shared by the family tests that need one."""
    tmp = tmp_path_factory.mktemp("families")
    args: list[str] = []
    for alias, name in FAMILIES.items():
        path = make_thinking_gguf(smollm_gguf, tmp / f"{alias}.gguf", template(name))
        args += ["--alias", f"{alias}={path}"]
    nemo = template("mistralai-Mistral-Nemo-Instruct-2407")
    marked = make_marker_gguf(smollm_gguf, tmp / "nemo-marked.gguf", nemo)
    args += ["--alias", f"nemo={marked}"]
    srv = start_server(tmp, "--parallel", "2", *args)
    yield srv
    stop_server(srv)
