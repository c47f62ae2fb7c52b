"""JSON schemas as decoding grammars, with the checks every dialect applies.

The conversion itself is llama.cpp's own converter (pure Python, handed on by the one module
that imports llama.cpp): a function of the schema alone, so the core runs it without asking a
model, before any model loads where a check needs it.
"""

from __future__ import annotations

import json
from typing import Any

from daemon.core.request import JsonFormat
from daemon.engine.native.llama import json_schema_to_gbnf
from daemon.engine.native.sampler import JSON_OBJECT_GBNF
from daemon.errors import InvalidRequest

# JSON-schema keywords the grammar converter does not turn into constraints. A schema using
# them is refused: accepting it would break the promise that output always validates.
UNENFORCEABLE = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "dependentRequired",
        "dependentSchemas",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def unenforceable_keywords(schema: Any) -> set[str]:
    """Keywords anywhere in `schema` that constrained decoding cannot guarantee."""
    found: set[str] = set()
    if not isinstance(schema, dict):
        return found
    found |= UNENFORCEABLE & schema.keys()
    for key in _SCHEMA_MAPS:
        sub = schema.get(key)
        if isinstance(sub, dict):
            for v in sub.values():
                found |= unenforceable_keywords(v)
    for key in _SCHEMA_LISTS:
        sub = schema.get(key)
        if isinstance(sub, list):
            for v in sub:
                found |= unenforceable_keywords(v)
    for key in ("items", "additionalProperties"):
        found |= unenforceable_keywords(schema.get(key))
    return found


def gbnf(schema: dict[str, Any] | None) -> str:
    """llama.cpp's conversion of `schema` to GBNF (None or empty: any JSON object); the one
    place the chat core reaches the converter. Raises whatever the converter raises."""
    if not schema:
        return JSON_OBJECT_GBNF
    return json_schema_to_gbnf(json.dumps(schema))


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
        return gbnf(schema)
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
