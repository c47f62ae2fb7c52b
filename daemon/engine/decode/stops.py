"""Stop-string matching on streamed text, holding back possible partial matches."""

from __future__ import annotations


class StopMatcher:
    """Feeds text deltas; releases text that can no longer be the start of a stop string."""

    __slots__ = ("_held", "_max_hold", "_stops", "matched", "stopped")

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._max_hold = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> str:
        """Add a delta; return the text safe to emit. Sets `stopped` when a stop string matched."""
        if not self._stops:
            return text
        buf = self._held + text
        hit = _earliest_match(buf, self._stops)
        if hit is not None:
            self._held = ""
            self.stopped = True
            self.matched = hit[1]
            return buf[: hit[0]]
        keep = _partial_suffix(buf, self._stops, self._max_hold)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Release held-back text at the end of generation."""
        out, self._held = self._held, ""
        return out


def _earliest_match(buf: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """Where the first complete stop string begins, and which one it is, if any."""
    best: tuple[int, str] | None = None
    for stop in stops:
        i = buf.find(stop)
        if i != -1 and (best is None or i < best[0]):
            best = (i, stop)
    return best


def _partial_suffix(buf: str, stops: tuple[str, ...], max_hold: int) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
    for n in range(min(len(buf), max_hold - 1), 0, -1):
        tail = buf[-n:]
        if any(stop.startswith(tail) for stop in stops):
            return n
    return 0
