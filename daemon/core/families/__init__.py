"""Model families: which one a chat template belongs to, and how its model writes calls and
reasoning (see docs/families.md)."""

from daemon.core.families.base import (
    CallContext,
    Harmony,
    RawCall,
    ReasoningStyle,
    Syntax,
    ThinkTags,
    ToolFormat,
)
from daemon.core.families.registry import GENERIC, PROMPTED, SYNTAXES, Family, family_of

__all__ = [
    "GENERIC",
    "PROMPTED",
    "SYNTAXES",
    "CallContext",
    "Family",
    "Harmony",
    "RawCall",
    "ReasoningStyle",
    "Syntax",
    "ThinkTags",
    "ToolFormat",
    "family_of",
]
