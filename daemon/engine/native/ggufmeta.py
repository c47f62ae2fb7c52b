"""What a GGUF file's header says about its model, read without loading it (gguf-py)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import gguf

from daemon.engine.embed.embeddings import ENCODER_ARCHS, VECTOR_POOLINGS

log = logging.getLogger("edged.registry")


@functools.lru_cache(maxsize=256)
def _embedding(path: Path, mtime_ns: int, size: int) -> bool:
    reader = gguf.GGUFReader(path)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = arch_field.contents() if arch_field is not None else None
    pooling = reader.get_field(f"{arch}.pooling_type") if arch else None
    if pooling is not None:
        try:
            return int(pooling.contents()) in {int(p) for p in VECTOR_POOLINGS}
        except (TypeError, ValueError):
            pass
    return arch in ENCODER_ARCHS


def is_embedding_file(path: Path) -> bool:
    """Whether the GGUF at `path` is an embedding model (the engine's own rule, from headers).

    An unreadable or missing file counts as a generation model: loading it will say what is wrong.
    """
    try:
        st = path.stat()
        return _embedding(path, st.st_mtime_ns, st.st_size)
    except (OSError, ValueError, KeyError, IndexError) as exc:  # truncated or not a GGUF
        log.debug("cannot read the header of %s: %s", path, exc)
        return False


@functools.lru_cache(maxsize=64)
def _senses(path: Path, mtime_ns: int, size: int) -> tuple[bool, bool]:
    reader = gguf.GGUFReader(path)

    def flag(key: str) -> bool:
        field = reader.get_field(key)
        return bool(field.contents()) if field is not None else False

    return flag("clip.has_vision_encoder"), flag("clip.has_audio_encoder")


def projector_senses(path: Path) -> tuple[bool, bool]:
    """Whether the mmproj GGUF at `path` has a vision encoder and an audio encoder, from its
    header (clip.has_vision_encoder, clip.has_audio_encoder); (False, False) when unreadable."""
    try:
        st = path.stat()
        return _senses(path, st.st_mtime_ns, st.st_size)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.debug("cannot read the header of %s: %s", path, exc)
        return False, False
