"""Incremental detokenization that never splits a UTF-8 character.

Control tokens render empty, except the markers model families write their calls and
reasoning with (`<|python_tag|>`, harmony's `<|channel|>`, `[TOOL_CALLS]`, ...): those are
what the chat core's parsers read, as llama-server keeps its "preserved tokens".
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

# Control-token texts the call and reasoning parsers of daemon/core/families read.
FAMILY_MARKERS = frozenset(
    {
        "<|python_tag|>",  # Llama 3.x, Functionary v3.1
        "<|channel|>",  # harmony (gpt-oss)
        "<|message|>",
        "<|start|>",
        "<|end|>",
        "<|constrain|>",
        "[TOOL_CALLS]",  # Mistral
        "[ARGS]",
        "[CALL_ID]",
        "<|START_ACTION|>",  # Command R7B
        "<|END_ACTION|>",
        "<|START_THINKING|>",
        "<|END_THINKING|>",
        "<|START_RESPONSE|>",
        "<|END_RESPONSE|>",
        "<|tool_call|>",  # Granite
        "<｜tool▁calls▁begin｜>",  # DeepSeek
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
        "<tool_call>",  # Hermes, Qwen (user-defined in most vocabularies; control in some)
        "</tool_call>",
        "<think>",
        "</think>",
    }
)
_MARKER_BYTES = frozenset(m.encode() for m in FAMILY_MARKERS)


def _special_of(piece: Callable[[int], bytes]) -> Callable[[int], bytes] | None:
    """The model's rendering of control tokens, when `piece` is a model's `piece` method."""
    return getattr(getattr(piece, "__self__", None), "special_piece", None)


class IncrementalDetokenizer:
    """Turns token pieces (bytes) into text as soon as whole characters are available."""

    __slots__ = ("_carry", "_decoder", "_markers", "_piece", "_special")

    def __init__(
        self,
        piece: Callable[[int], bytes],
        carry: bytes = b"",
        special: Callable[[int], bytes] | None = None,
    ) -> None:
        self._piece = piece
        # How a token that renders empty reads as a control token (None: they stay empty).
        self._special = special if special is not None else _special_of(piece)
        self._markers: dict[int, bytes] = {}  # control tokens seen: their rendering
        # errors="replace" only matters for invalid sequences; incomplete ones are held back.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Bytes of a character a previous call of the same sequence started (continuations).
        self._carry = self._decoder.decode(carry) if carry else ""

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        data = self._piece(token)
        if not data and self._special is not None:
            data = self._marker(token)
        text = self._decoder.decode(data)
        if self._carry:
            text, self._carry = self._carry + text, ""
        return text

    def _marker(self, token: int) -> bytes:
        """A control token's text if it is a family marker, else nothing."""
        seen = self._markers.get(token)
        if seen is None:
            assert self._special is not None
            raw = self._special(token)
            seen = self._markers[token] = raw if raw in _MARKER_BYTES else b""
        return seen

    def held(self) -> bytes:
        """Bytes of an incomplete character held back (carried into a continuation)."""
        return bytes(self._decoder.getstate()[0])

    def flush(self) -> str:
        """Return whatever bytes are still pending, replacing an incomplete tail."""
        text = self._carry + self._decoder.decode(b"", final=True)
        self._carry = ""
        return text
