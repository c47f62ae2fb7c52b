"""docs/configuration.md is current: regenerated it is the same file, and every flag, its
environment variable and its default stand on one row (checked against the code, not the
generator)."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.__main__ import _parser
from daemon.cli import config_reference
from daemon.config import GenerationDefaults, Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
HOW = "regenerate it with `python -m daemon.cli.config_reference` and commit docs/configuration.md"

# Flags of `edged serve` that set no Settings field (a new one must be added here on purpose).
NOT_SETTINGS = {"log_level"}
# Flags whose dest is not their field's name.
FIELD_OF_DEST = {"alias": "aliases"}


def _sub(name: str) -> argparse.ArgumentParser:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(f"edged has no {name} sub-command")


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _section(title: str) -> list[str]:
    """The table rows of one `## title` section of the page."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {title}")
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append(line)
    assert rows, f"docs/configuration.md has no table under '## {title}'; {HOW}"
    return rows


def _first_cell(row: str) -> str:
    return row.split(" | ")[0]


def _row_of_flag(rows: list[str], flag: str) -> str:
    found = [r for r in rows if f"`{flag}`" in _first_cell(r) or f"`{flag} " in _first_cell(r)]
    assert len(found) == 1, f"{flag} has {len(found)} rows in docs/configuration.md; {HOW}"
    return found[0]


def _row_of_env(rows: list[str], env: str) -> str:
    found = [r for r in rows if f"`{env}`" in r]
    assert len(found) == 1, f"{env} has {len(found)} rows in docs/configuration.md; {HOW}"
    return found[0]


def _default_shown(default: object) -> str:
    """How the page writes a plain default."""
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, float):
        return f"`{default:g}`"
    if default == "":
        return '`""`'
    if default is None:
        return "unset"
    return f"`{default}`"


def _check_default(row: str, name: str) -> None:
    info = Settings.model_fields[name]
    if info.default_factory is list:
        expected = "`[]`"
    elif info.default_factory is dict:
        expected = "`{}`"
    elif info.default_factory is not None:  # computed per machine (threads): described
        default_cell = row.split(" | ")[2].strip()
        assert default_cell, f"{name}'s computed default is not described; {HOW}"
        return
    else:
        expected = _default_shown(info.default)
    assert expected in row, f"{name}: default {expected} missing from its row {row!r}; {HOW}"


def test_page_is_what_the_generator_renders() -> None:
    assert PAGE.read_text(encoding="utf-8") == config_reference.render(), (
        f"docs/configuration.md differs from the settings model and the parser: {HOW}"
    )


def test_every_serve_flag_has_its_row() -> None:
    rows = _section("`edged serve`")
    prefix = Settings.model_config["env_prefix"]
    covered = set()
    for action in _options(_sub("serve")):
        for flag in action.option_strings:
            row = _row_of_flag(rows, flag)
        if action.dest in NOT_SETTINGS:
            continue
        name = FIELD_OF_DEST.get(action.dest, action.dest)
        assert name in Settings.model_fields, (
            f"{action.option_strings[0]} sets no Settings field named {name}: map it in this "
            "test (FIELD_OF_DEST or NOT_SETTINGS) and in the generator"
        )
        covered.add(name)
        env = f"{prefix}{name}".upper()
        assert f"`{env}`" in row, f"{env} missing from the row of {flag}; {HOW}"
        _check_default(row, name)
    for name in Settings.model_fields.keys() - covered - {"generation"}:
        row = _row_of_env(rows, f"{prefix}{name}".upper())
        _check_default(row, name)


def test_every_generation_default_has_its_row() -> None:
    rows = _section("`/api/generate` defaults")
    prefix = Settings.model_config["env_prefix"]
    delimiter = Settings.model_config["env_nested_delimiter"]
    for name, info in GenerationDefaults.model_fields.items():
        row = _row_of_env(rows, f"{prefix}generation{delimiter}{name}".upper())
        expected = _default_shown(info.default)
        assert expected in row, f"generation.{name}: {expected} missing from {row!r}; {HOW}"


def test_every_rpc_worker_flag_has_its_row() -> None:
    rows = _section("`edged rpc-worker`")
    for action in _options(_sub("rpc-worker")):
        for flag in action.option_strings:
            row = _row_of_flag(rows, flag)
            if action.default not in (None, False):
                assert _default_shown(action.default) in row, f"{flag}: default; {HOW}"
