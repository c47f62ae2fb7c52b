"""What a model's memory keeps of a sequence, and so which prefixes of it can be resumed.

A plain KV cache keeps every position: a sequence can be cut back to any prefix. A
sliding-window layer attends to the last `n_swa` positions only, and llama.cpp drops (or,
with a full-size cache, stops saving) the cells behind the window: a prefix of `k` tokens
is resumable only while the cells of positions [k - n_swa + 1, k) are still held. A
recurrent layer (Mamba, RWKV, the SSM half of a hybrid) keeps one state, that of the last
position: `llama_memory_seq_rm` cannot roll it back, so only the whole held sequence (or
nothing) is resumable, and a rejected speculative draft can never be removed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    """The kind of memory a model's layers keep: "kv", "swa", "recurrent" or "hybrid"."""

    kind: str = "kv"
    # Sliding-window size (swa), 0 otherwise.
    n_swa: int = 0

    @classmethod
    def of(cls, n_swa: int, recurrent: bool, hybrid: bool) -> Memory:
        """The memory of a model from what llama.cpp says of it (`native.llama.Model`)."""
        if hybrid:
            return cls("hybrid")
        if recurrent:
            return cls("recurrent")
        return cls("swa", n_swa) if n_swa > 0 else cls()

    @property
    def rolls_back(self) -> bool:
        """Whether the newest positions can be removed (speculation's rejected drafts)."""
        return self.kind in ("kv", "swa")

    @property
    def behind(self) -> int:
        """Positions before a resume point whose state a resumed sequence still needs."""
        if self.kind == "swa":
            return self.n_swa - 1
        if self.kind in ("recurrent", "hybrid"):
            return 1  # the state after the last position, nothing before it
        return 0

    def resumes(self, keep: int, pos_min: int) -> bool:
        """Whether a sequence whose oldest held position is `pos_min` can be cut back to its
        first `keep` tokens (0 always: nothing is kept)."""
        return keep <= 0 or pos_min <= max(0, keep - self.behind)

    def restored_pos_min(self, n_tokens: int) -> int:
        """The oldest position a saved state of `n_tokens` holds once restored: llama.cpp saves
        no cell a sliding window has left behind, and a recurrent state is one position."""
        if self.kind == "swa":
            return max(0, n_tokens - self.n_swa)
        if self.kind in ("recurrent", "hybrid"):
            return max(0, n_tokens - 1)
        return 0

    def describe(self, swa_full: bool) -> str:
        """The memory as `/props` reports it."""
        if self.kind == "swa":
            return f"sliding window {self.n_swa} ({'full' if swa_full else 'window'} cache)"
        if self.kind == "recurrent":
            return "recurrent state (resumes whole sequences only)"
        if self.kind == "hybrid":
            return "hybrid attention + recurrent state (resumes whole sequences only)"
        return "kv cache"
