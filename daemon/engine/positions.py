"""Where a sequence's KV cells sit in position: the cell's index, except after an image of an
M-RoPE model (Qwen2-VL and its successors).

M-RoPE gives each image token a (time, row, column) position. An image of nx × ny tokens
fills nx·ny cells, all at one time position, and advances the sequence by max(nx, ny)
positions, not nx·ny: text after it sits at an index larger than its position. llama.cpp's
KV cells store the time position, and `llama_memory_seq_rm` cuts by it, so an image is kept
whole or not at all.

A slot records such images as jumps (in index order); everything that puts cells into a
sequence or cuts them asks the jumps where an index sits. Without jumps (every text model,
every other projector) a position is its index.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Jump:
    """Cells start.. of one image that takes `advance` positions for its `cells` cells."""

    start: int
    cells: int
    advance: int

    @property
    def end(self) -> int:
        """The index after the image."""
        return self.start + self.cells


Jumps = tuple[Jump, ...]


def position(jumps: Jumps, index: int) -> int:
    """The (time) position of cell `index`: an image's cells all sit at its first one's."""
    shift = 0
    for j in jumps:
        if index < j.start:
            break
        if index < j.end:
            return j.start - shift
        shift += j.cells - j.advance
    return index - shift


def whole(jumps: Jumps, keep: int) -> int:
    """The longest prefix of at most `keep` cells that holds no image in part."""
    for j in jumps:
        if j.start < keep < j.end:
            return j.start
    return keep


def before(jumps: Jumps, keep: int) -> Jumps:
    """The jumps of the first `keep` cells (`keep` cuts no image in part)."""
    return tuple(j for j in jumps if j.end <= keep)
