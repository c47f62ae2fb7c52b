"""Media in a prompt, in the engine's terms: embeddings at known positions of the prompt.

A prompt with media is tokenized by libmtmd into text tokens and media chunks, and each
media chunk encoded to embeddings (once: a per-model cache keeps them by digest). Every
media position gets a stand-in token id, negative (no vocabulary id is), derived from the
medium's digest and its place in it: slot prefix reuse and the prompt cache then compare
media by digest with the token comparisons they make for text. Stand-ins are never sampled
or detokenized: the scheduler decodes the span's embeddings in their place, in a decode
call of their own (a llama_batch holds tokens or embeddings, never both).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daemon.engine.errors import InvalidInput, ModelUnavailable
from daemon.engine.mediainfo import MediaKind
from daemon.engine.native.media_chunks import Placement
from daemon.engine.native.mtmd import ChunkType, Projector
from daemon.engine.positions import Jump


@dataclass(frozen=True)
class Medium:
    """One image or audio clip of a prompt: the encoded file's bytes, their sha256 (hex),
    which names the clip to the caches, and what the caller took it for."""

    data: bytes
    digest: str
    kind: MediaKind = "image"


@dataclass(frozen=True)
class MediaSpan:
    """The embeddings of one media chunk and where they go: prompt indices start.. ; for an
    M-RoPE model its placement, and the `advance` positions it takes (fewer than its
    tokens for an image: see positions.py)."""

    start: int
    embd: np.ndarray  # (n, n_embd) float32, read only
    non_causal: bool = False
    placement: Placement | None = None
    advance: int | None = None  # None: one position a token

    @property
    def end(self) -> int:
        """The prompt index after the span."""
        return self.start + len(self.embd)

    def jump(self) -> Jump | None:
        """The span as a jump of its slot's positions, where it takes fewer than a position
        a token."""
        if self.advance is None or self.advance == len(self.embd):
            return None
        return Jump(self.start, len(self.embd), self.advance)


@dataclass(frozen=True)
class MediaPrompt:
    """The media spans of one prompt, in prompt order (stand-ins at their indices)."""

    spans: tuple[MediaSpan, ...]

    def span_at(self, index: int) -> MediaSpan:
        """The span covering prompt index `index` (which holds a stand-in)."""
        for s in self.spans:
            if s.start <= index < s.end:
                return s
        raise KeyError(index)


def stand_in(key: str, i: int) -> int:
    """The stand-in id of position i of media chunk `key`: in [-2**31, -2] (-1 means no
    token in the scheduler), equal for equal media, distinct otherwise but by 2**-31."""
    h = hashlib.blake2b(f"{key}/{i}".encode(), digest_size=4).digest()
    return -2 - int.from_bytes(h, "little") % (2**31 - 1)


def is_stand_in(token: int) -> bool:
    """Whether a prompt token stands for a media position."""
    return token < 0


class EmbeddingCache:
    """Media embeddings by chunk key, least recently used out first, bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0

    def get(self, key: str) -> np.ndarray | None:
        """The embeddings of `key`, if kept."""
        embd = self._entries.get(key)
        if embd is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return embd

    def put(self, key: str, embd: np.ndarray) -> None:
        """Keep `embd` under `key`, evicting the oldest past the bound."""
        if key in self._entries or embd.nbytes > self.max_bytes:
            return
        self._entries[key] = embd
        self.bytes += embd.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes


class MediaEncoder:
    """A model's projector used one thread at a time: media prompts tokenized and encoded."""

    def __init__(
        self, projector: Projector, cache_bytes: int = 64 << 20, identity: str = ""
    ) -> None:
        self.projector = projector
        self.cache = EmbeddingCache(cache_bytes)
        # The projector file's identity (sha256) goes into every stand-in: KV that another
        # projector file computed for the same image (kept under a request_id across a
        # replaced --mmproj, then left in a slot) is never taken for this one's.
        self.identity = identity
        # libmtmd keeps one output buffer per projector; requests come from many threads.
        self._lock = threading.Lock()

    def prompt(
        self,
        text: str,
        media: Sequence[Medium],
        *,
        add_special: bool,
        max_pixels: int | None = None,
        max_seconds: float | None = None,
        owner: str = "",
        whole_rows: int | None = None,
    ) -> tuple[list[int], MediaPrompt]:
        """Tokens (stand-ins at media positions) and media spans of `text`, which holds the
        projector's marker once per medium, in order. Blocks: call it off the event loop.
        `max_seconds` bounds the prompt's audio, all clips together, as decoded.

        `whole_rows` is the most rows one decode computes at once (batch and micro-batch):
        a medium the text model attends to bidirectionally (Gemma 3) must fit in it.

        Embeddings are cached per `owner` (API key): how fast an image encodes never tells
        one key that another sent it. Stand-ins are not: the prompt cache's owner rule
        decides whose KV a key may reuse, as for text."""
        p = self.projector
        with self._lock:
            if not p.ptr:  # the model was unloaded while this request waited for the lock
                raise ModelUnavailable("the model was unloaded; retry", retry_after=1)
            bitmaps = []
            try:
                seconds = 0.0
                for m in media:
                    bitmap = p.bitmap_file_bytes(
                        m.data,
                        m.digest,
                        max_pixels=max_pixels,
                        max_seconds=max_seconds,
                        seconds_before=seconds,
                    )
                    bitmaps.append(bitmap)
                    if bitmap.is_audio:
                        seconds += bitmap.width / p.audio_sample_rate
                with p.tokenize(text, bitmaps, add_special=add_special) as chunks:
                    tokens: list[int] = []
                    spans: list[MediaSpan] = []
                    seen: Counter[str] = Counter()
                    for chunk in chunks:
                        if chunk.type == ChunkType.TEXT:
                            tokens.extend(chunk.text_tokens())
                            continue
                        if (
                            whole_rows is not None
                            and chunk.n_tokens > whole_rows
                            and p.non_causal(chunk)
                        ):
                            raise InvalidInput(
                                f"this model attends to an image's {chunk.n_tokens} tokens "
                                "as a whole, which needs --batch-size and --ubatch-size of "
                                f"at least {chunk.n_tokens} (this daemon: {whole_rows})",
                                subject="image",
                            )
                        # One image may become several chunks (Idefics3: two): each its own key.
                        digest = chunk.id or ""
                        key = f"{self.identity}:{digest}#{seen[digest]}"
                        seen[digest] += 1
                        embd = self.cache.get(f"{owner}\0{key}")
                        if embd is None:
                            embd = p.encode(chunk)
                            embd.setflags(write=False)
                            self.cache.put(f"{owner}\0{key}", embd)
                        placement = chunk.placement() if p.uses_mrope else None
                        spans.append(
                            MediaSpan(
                                len(tokens),
                                embd,
                                p.non_causal(chunk),
                                placement,
                                chunk.n_pos if p.uses_mrope else None,
                            )
                        )
                        tokens.extend(stand_in(key, i) for i in range(chunk.n_tokens))
            finally:
                for b in bitmaps:
                    b.close()
        if tokens and is_stand_in(tokens[-1]):
            # The last prompt position must yield logits; embedding rows do not.
            raise InvalidInput("a prompt must not end with an image or audio", subject="image")
        return tokens, MediaPrompt(tuple(spans))

    def close(self) -> None:
        """Free the projector (before its text model)."""
        with self._lock:
            self.projector.close()
