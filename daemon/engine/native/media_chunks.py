"""libmtmd's objects a projector makes and reads: bitmaps (one image or audio clip each) and a
tokenized prompt's chunks (text runs and media), each released deterministically (close or
`with`). The bindings come from native/llama.py, the one module that imports llama.cpp."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from daemon.engine.errors import GenerationFailed
from daemon.engine.native.llama import mtmd


class ChunkType(IntEnum):
    """What one chunk of a tokenized prompt holds (mtmd_input_chunk_type's values, spelled
    out so that this module imports where the build has no libmtmd)."""

    TEXT = 0
    IMAGE = 1
    AUDIO = 2


@dataclass(frozen=True)
class Placement:
    """Where an M-RoPE model puts a media chunk's tokens: 4 position sections per token in
    llama_batch's order (time, row, column, spare), at first position p0 equal to
    base + p0·slope."""

    base: np.ndarray  # (4, n) int32
    slope: np.ndarray  # (4, n) int32

    def at(self, p0: int, lo: int, hi: int) -> np.ndarray:
        """The positions of tokens lo..hi of a chunk that starts at position p0."""
        return self.base[:, lo:hi] + p0 * self.slope[:, lo:hi]


class Bitmap:
    """One image (RGB) or audio clip (float PCM) for libmtmd, with an optional id (a digest
    of the decoded media, which names its chunks for KV reuse)."""

    def __init__(self, ptr: int, media_id: str | None = None) -> None:
        self.ptr: int | None = ptr
        if media_id is not None:
            mtmd.mtmd_bitmap_set_id(ptr, media_id.encode())
        self.width: int = mtmd.mtmd_bitmap_get_nx(ptr)
        self.height: int = mtmd.mtmd_bitmap_get_ny(ptr)
        self.is_audio: bool = bool(mtmd.mtmd_bitmap_is_audio(ptr))

    def live(self) -> int:
        """The raw pointer; refuses a closed bitmap."""
        if not self.ptr:
            raise RuntimeError("the bitmap is closed")
        return self.ptr

    @property
    def id(self) -> str | None:
        """The id given at creation, if any."""
        raw = mtmd.mtmd_bitmap_get_id(self.live())
        return raw.decode() if raw else None

    def data(self) -> bytes:
        """A copy of the bitmap's bytes (RGB rows, or float32 samples for audio)."""
        n = mtmd.mtmd_bitmap_get_n_bytes(self.live())
        return ctypes.string_at(mtmd.mtmd_bitmap_get_data(self.live()), n)

    def close(self) -> None:
        """Free the bitmap (chunks tokenized from it keep their own copy)."""
        if self.ptr:
            mtmd.mtmd_bitmap_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Bitmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Chunks:
    """A tokenized prompt: text runs and media chunks, in order."""

    def __init__(self, ptr: int) -> None:
        if not ptr:
            raise GenerationFailed("libmtmd could not allocate chunks")
        self.ptr: int | None = ptr

    def live(self) -> int:
        """The raw pointer; refuses closed chunks."""
        if not self.ptr:
            raise RuntimeError("the chunks are closed")
        return self.ptr

    def __len__(self) -> int:
        return mtmd.mtmd_input_chunks_size(self.live())

    def __getitem__(self, i: int) -> Chunk:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return Chunk(self, mtmd.mtmd_input_chunks_get(self.live(), i % n))

    def __iter__(self) -> Iterator[Chunk]:
        return (self[i] for i in range(len(self)))

    @property
    def n_tokens(self) -> int:
        """Tokens of every chunk together (text tokens plus media embeddings)."""
        return mtmd.mtmd_helper_get_n_tokens(self.live())

    @property
    def n_pos(self) -> int:
        """KV positions the chunks take (fewer than n_tokens for M-RoPE images)."""
        return mtmd.mtmd_helper_get_n_pos(self.live())

    def close(self) -> None:
        """Free every chunk."""
        if self.ptr:
            mtmd.mtmd_input_chunks_free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Chunks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Chunk:
    """One chunk, a view into its Chunks (valid while they are open)."""

    def __init__(self, owner: Chunks, ptr: int) -> None:
        self._owner = owner
        self._ptr = ptr
        kind = mtmd.mtmd_input_chunk_get_type(ptr)
        try:
            self.type = ChunkType(kind)
        except ValueError:
            raise GenerationFailed(f"libmtmd made a chunk of unknown type {kind}") from None
        self.n_tokens: int = mtmd.mtmd_input_chunk_get_n_tokens(ptr)
        self.n_pos: int = mtmd.mtmd_input_chunk_get_n_pos(ptr)

    def live(self) -> int:
        """The raw pointer; refuses a chunk whose Chunks are closed."""
        self._owner.live()
        return self._ptr

    @property
    def id(self) -> str | None:
        """The media id of the bitmap this chunk came from (None for text or no id)."""
        raw = mtmd.mtmd_input_chunk_get_id(self.live())
        return raw.decode() if raw else None

    def placement(self) -> Placement:
        """Where an M-RoPE model puts this media chunk's tokens: libmtmd's layout (a 2-D grid
        for a Qwen2-VL image; one position a token for audio)."""
        n = self.n_tokens
        if self.type != ChunkType.IMAGE:
            steps = np.broadcast_to(np.arange(n, dtype=np.int32), (4, n))
            return Placement(steps.copy(), np.ones((4, n), dtype=np.int32))
        image = mtmd.mtmd_input_chunk_get_tokens_image(self.live())
        if not image:
            raise GenerationFailed("libmtmd gave an image chunk without image tokens")
        # libmtmd's positions are affine in the first one: read them at 0 and at 1.
        at = np.empty((2, 4, n), dtype=np.int64)
        for p0 in (0, 1):
            for i in range(n):
                pos = mtmd.mtmd_image_tokens_get_decoder_pos(image, p0, i)
                at[p0, :, i] = (pos.t, pos.y, pos.x, pos.z)
        return Placement(at[0].astype(np.int32), (at[1] - at[0]).astype(np.int32))

    def text_tokens(self) -> list[int]:
        """The token ids of a text chunk ([] for media)."""
        chunk = self.live()
        if self.type != ChunkType.TEXT:
            return []
        n = ctypes.c_size_t(0)
        ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
        return list(ptr[: n.value]) if ptr and n.value else []
