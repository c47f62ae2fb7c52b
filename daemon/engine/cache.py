"""The request_id store: finished sequences kept so a later request can continue them.

Entries are keyed by (owner, request_id), where owner identifies the caller's API key, so
one key can never continue another key's generation. Memory is bounded in bytes (LRU);
evicted entries spill to a directory when one is configured, itself bounded in bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from daemon.engine.types import SavedSequence
from daemon.errors import Conflict

log = logging.getLogger("edged.store")

StoreKey = tuple[str, str]


class SequenceStore:
    """Bounded, thread-safe LRU of SavedSequence with optional spill to disk."""

    def __init__(
        self,
        max_bytes: int,
        *,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 4 << 30,
    ) -> None:
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.spill_max_bytes = spill_max_bytes
        self._mem: OrderedDict[StoreKey, SavedSequence] = OrderedDict()
        self._busy: set[StoreKey] = set()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._mem)

    def claim(self, key: StoreKey) -> SavedSequence | None:
        """Mark `key` as generating and return what it may continue; 409 if it is busy."""
        with self._lock:
            if key in self._busy:
                raise Conflict(
                    f"request_id {key[1]!r} is being generated right now", param="request_id"
                )
            self._busy.add(key)
            entry = self._mem.get(key)
            if entry is not None:
                self._mem.move_to_end(key)
        if entry is None:
            entry = self._load_spilled(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def release(self, key: StoreKey, entry: SavedSequence | None) -> None:
        """End a generation under `key`, keeping `entry` (None keeps the previous one)."""
        evicted: list[tuple[StoreKey, SavedSequence]] = []
        with self._lock:
            self._busy.discard(key)
            if entry is None:
                return
            old = self._mem.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._mem[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and self._mem:
                k, e = self._mem.popitem(last=False)
                self._bytes -= e.nbytes
                evicted.append((k, e))
        for k, e in evicted:
            self._spill(k, e)

    def discard(self, key: StoreKey) -> None:
        """Forget `key`, in memory and spilled (its owner deleted what it belonged to)."""
        with self._lock:
            old = self._mem.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
        if self.spill_dir is not None:
            base = self._path(key)
            base.with_suffix(".kv").unlink(missing_ok=True)
            base.with_suffix(".json").unlink(missing_ok=True)

    def persist(self) -> int:
        """Write every in-memory entry to the spill directory; returns how many were written."""
        if self.spill_dir is None:
            return 0
        with self._lock:
            items = list(self._mem.items())
        for k, e in items:
            self._spill(k, e)
        return len(items)

    # ---- spill ----------------------------------------------------------------------

    def _path(self, key: StoreKey) -> Path:
        assert self.spill_dir is not None
        digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()
        return self.spill_dir / digest

    def _spill(self, key: StoreKey, entry: SavedSequence) -> None:
        if self.spill_dir is None:
            return
        base = self._path(key)
        meta = {
            "key": list(key),
            "tokens": list(entry.tokens),
            "pending": list(entry.pending),
            "n_prompt": entry.n_prompt,
            "finished": entry.finished,
            "exact": entry.exact,
        }
        try:
            tmp = base.with_suffix(".tmp")
            tmp.write_bytes(entry.state or b"")
            tmp.replace(base.with_suffix(".kv"))
            base.with_suffix(".json").write_text(json.dumps(meta))
        except OSError as exc:
            log.warning("could not spill a request_id entry: %s", exc)
            return
        self._trim_spill()

    def _load_spilled(self, key: StoreKey) -> SavedSequence | None:
        if self.spill_dir is None:
            return None
        base = self._path(key)
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            state = base.with_suffix(".kv").read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("key") != list(key):
            return None
        return SavedSequence(
            tokens=tuple(meta["tokens"]),
            pending=tuple(meta["pending"]),
            n_prompt=int(meta["n_prompt"]),
            state=state or None,
            finished=bool(meta.get("finished", False)),
            exact=int(meta.get("exact", 0)),
        )

    def _trim_spill(self) -> None:
        assert self.spill_dir is not None
        files = sorted(self.spill_dir.glob("*.kv"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.spill_max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
