"""A model file's identity: the sha256 of its content, which kept state is keyed by.

A model replaced under the same name (a re-pull, a copy, an operator's update) gets another
identity, so a request_id entry, a prompt-cache entry or a Responses chain computed by the
old weights is never resumed on the new ones. The cheap path is the pull sidecar
(`<stem>.json`) when it records the file's `sha256` together with the `size` and
`mtime_ns` the file still has; otherwise the file is hashed in 1 MiB chunks (in the load
thread). Results are cached in memory by (st_dev, st_ino, st_size, st_mtime_ns), so a model
loaded again from an unchanged file is not hashed again. A split model's identity covers
every part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})$")
_CHUNK = 1 << 20

_lock = threading.Lock()
_known: dict[tuple[int, int, int, int], str] = {}


def split_parts(path: Path) -> list[Path]:
    """Every file of the model whose (first) file is `path`."""
    m = _SPLIT.match(path.stem)
    if m is None:
        return [path]
    n = int(m["n"])
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{m['n']}.gguf") for i in range(1, n + 1)]


def file_identity(path: Path) -> str:
    """The model's identity: the sha256 (hex) of its file, or of its parts' digests."""
    parts = split_parts(path)
    if len(parts) == 1:
        return file_sha256(path)
    h = hashlib.sha256()
    for p in parts:
        h.update(file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_sha256(path: Path) -> str:
    """sha256 of one file's content: the sidecar's when it still describes the file, else
    computed (and remembered while the file keeps its inode, size and mtime)."""
    st = path.stat()
    key = _stat_key(st)
    with _lock:
        known = _known.get(key)
    if known is not None:
        return known
    digest = _sidecar_sha256(path, st)
    if digest is None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        if _stat_key(path.stat()) != key:  # changed while we read it: do not remember
            return digest
    with _lock:
        _known[key] = digest
    return digest


def _sidecar_sha256(path: Path, st: os.stat_result) -> str | None:
    """The pull sidecar's sha256, if it records this very file (same size and mtime_ns)."""
    try:
        side = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict):
        return None
    sha, size, mtime = side.get("sha256"), side.get("size"), side.get("mtime_ns")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        return None
    if size != st.st_size or mtime != st.st_mtime_ns:
        return None
    return sha
