"""Incremental detokenization that never splits a UTF-8 character."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class IncrementalDetokenizer:
    """Turns token pieces (bytes) into text as soon as whole characters are available."""

    __slots__ = ("_decoder", "_piece")

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        # errors="replace" only matters for invalid sequences; incomplete ones are held back.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        return self._decoder.decode(self._piece(token))

    def flush(self) -> str:
        """Return whatever bytes are still pending, replacing an incomplete tail."""
        return self._decoder.decode(b"", final=True)
