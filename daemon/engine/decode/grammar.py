"""Grammars that constrain decoding: JSON objects and JSON schemas as GBNF."""

from __future__ import annotations

from typing import Any

from daemon.engine.native.sampler import JSON_OBJECT_GBNF, json_grammar

__all__ = ["JSON_OBJECT_GBNF", "json_grammar", "unenforceable_keywords"]

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
