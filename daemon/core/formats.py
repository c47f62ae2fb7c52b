"""JSON schemas as decoding grammars, with the checks every dialect applies."""

from __future__ import annotations

from typing import Any

from daemon.core.request import JsonFormat
from daemon.engine.decode.grammar import json_grammar, unenforceable_keywords
from daemon.errors import InvalidRequest


def schema_grammar(schema: dict[str, Any] | None, param: str) -> str:
    """GBNF that only admits JSON valid under `schema` (None: any JSON object).

    A schema whose keywords constrained decoding cannot enforce is refused rather than
    loosened: the promise is that the output validates.
    """
    unsupported = unenforceable_keywords(schema)
    if unsupported:
        raise InvalidRequest(
            f"constrained decoding cannot enforce {', '.join(sorted(unsupported))}; "
            "remove them or use a raw grammar",
            param=param,
        )
    try:
        return json_grammar(schema)
    except Exception as exc:  # the converter raises many kinds on schemas it cannot handle
        raise InvalidRequest(f"unusable JSON schema: {exc}", param=param) from exc


def request_grammar(fmt: JsonFormat | None, grammar: str | None, param: str) -> str | None:
    """The GBNF that constrains a request's output: its raw `grammar`, or its JSON format's
    (`param`: the dialect's name for the format field)."""
    if fmt is None:
        return grammar
    if grammar is not None:
        raise InvalidRequest("use either grammar or response_format, not both", param="grammar")
    return schema_grammar(fmt.schema, param)
