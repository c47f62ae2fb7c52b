"""The person-facing verbs of `edged`: one small module per verb, each adding its sub-parser.

`edged serve` and `edged models` stay in daemon/__main__.py; a verb here is added by
listing its module in `_VERBS` (each module has `add(sub)` setting `func`).
"""

from __future__ import annotations

import argparse
import importlib

from daemon.durations import parse_duration

_VERBS = (
    "daemon.cli.pull",
    "daemon.cli.local",
    "daemon.cli.ps",
    "daemon.cli.run",
    "daemon.cli.doctor",
)


def duration(text: str) -> float:
    """argparse type for flags taking seconds: `300`, `90s`, `5m`, `1h`."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register every verb module's sub-command."""
    for module in _VERBS:
        importlib.import_module(module).add(sub)
