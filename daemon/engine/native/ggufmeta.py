"""What a GGUF file's header says about its model, read without loading it."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import gguf

from daemon.engine.embed.embeddings import ENCODER_ARCHS, VECTOR_POOLINGS
from quantize.gguf_header import GGUFHeader, read_header

log = logging.getLogger("edged.registry")


@functools.lru_cache(maxsize=256)
def _read(path: Path, mtime_ns: int, size: int) -> GGUFHeader:
    return read_header(path)


def header(path: Path) -> GGUFHeader:
    """The header of the GGUF at `path`, read once per version of the file (its mtime and
    size). OSError when it cannot be read, ValueError when it is no GGUF or is damaged."""
    st = path.stat()
    return _read(path, st.st_mtime_ns, st.st_size)


def _embedding(h: GGUFHeader) -> bool:
    arch = h.get(gguf.Keys.General.ARCHITECTURE)
    pooling = h.get(f"{arch}.pooling_type") if arch else None
    if pooling is not None:
        try:
            return int(pooling) in {int(p) for p in VECTOR_POOLINGS}
        except (TypeError, ValueError):
            pass
    return arch in ENCODER_ARCHS


def is_embedding_file(path: Path) -> bool:
    """Whether the GGUF at `path` is an embedding model (the engine's own rule, from headers).

    An unreadable or missing file counts as a generation model: loading it will say what is wrong.
    """
    try:
        return _embedding(header(path))
    except (OSError, ValueError) as exc:  # truncated or not a GGUF
        log.debug("cannot read the header of %s: %s", path, exc)
        return False


def projector_senses(path: Path) -> tuple[bool, bool]:
    """Whether the mmproj GGUF at `path` has a vision encoder and an audio encoder, from its
    header (clip.has_vision_encoder, clip.has_audio_encoder); (False, False) when unreadable."""
    try:
        h = header(path)
    except (OSError, ValueError) as exc:
        log.debug("cannot read the header of %s: %s", path, exc)
        return False, False
    return bool(h.get("clip.has_vision_encoder")), bool(h.get("clip.has_audio_encoder"))
