"""Incremental detokenization that never splits a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class IncrementalDetokenizer:
    """Turns token pieces (bytes) into text as soon as whole characters are available."""

    __slots__ = ("_carry", "_decoder", "_piece")

    def __init__(self, piece: Callable[[int], bytes], carry: bytes = b"") -> None:
        self._piece = piece
        # errors="replace" only matters for invalid sequences; incomplete ones are held back.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Bytes of a character a previous call of the same sequence started (continuations).
        self._carry = self._decoder.decode(carry) if carry else ""

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        text = self._decoder.decode(self._piece(token))
        if self._carry:
            text, self._carry = self._carry + text, ""
        return text

    def held(self) -> bytes:
        """Bytes of an incomplete character held back (carried into a continuation)."""
        return bytes(self._decoder.getstate()[0])

    def flush(self) -> str:
        """Return whatever bytes are still pending, replacing an incomplete tail."""
        text = self._carry + self._decoder.decode(b"", final=True)
        self._carry = ""
        return text
