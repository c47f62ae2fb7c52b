"""The request_id store: kept sequences a later request can continue.

Entries are keyed by (owner, request_id), where owner identifies the caller's API key, so
one key can never continue another key's generation. Memory is bounded in bytes (LRU), and
each owner has its own byte quota, so one key's burst evicts only that key's entries.
Entries unused for `ttl` seconds expire. Evicted entries spill to a directory when one is
configured (itself bounded in bytes), one self-checking file per entry, written atomically.

Spill files are written by one writer thread per store, never by the thread that released
the entry (the scheduler: an fsync there would stall every stream). Until its file is
durable an evicted entry stays readable in memory (`_pending`), and file operations of one
store run under one lock (`_io`): a delete that lands during a spill removes the file once
the spill is done, and a spill whose entry was deleted or replaced meanwhile writes nothing.
Every entry records the identity of the model file whose weights computed it (`model_id`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from daemon.engine.errors import IdBusy
from daemon.engine.positions import Jump
from daemon.engine.types import SavedSequence

log = logging.getLogger("edged.store")

StoreKey = tuple[str, str]

# A spill file: magic, header length, JSON header (key, tokens, sha256 of the KV bytes), KV.
_MAGIC = b"EDGSEQ1\n"
_SUFFIX = ".seq"


@dataclass
class _Entry:
    seq: SavedSequence
    used: float  # wall-clock time of the last claim or save (for the TTL)


class SequenceStore:
    """Bounded, thread-safe LRU of SavedSequence with per-owner quotas, TTL and disk spill."""

    def __init__(
        self,
        max_bytes: int,
        *,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 4 << 30,
        owner_max_bytes: int | None = None,
        ttl: float | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.owner_max_bytes = max_bytes if owner_max_bytes is None else owner_max_bytes
        self.ttl = ttl
        self.spill_dir = spill_dir
        self.spill_max_bytes = spill_max_bytes
        self._mem: OrderedDict[StoreKey, _Entry] = OrderedDict()
        self._busy: set[StoreKey] = set()
        self._bytes = 0
        self._owner_bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expired = 0
        # Evicted entries whose spill file is not written yet: still readable from here.
        self._pending: dict[StoreKey, SavedSequence] = {}
        # File operations of this store (spill writes, deletes, loads), one at a time.
        self._io = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        if spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="edged-store-spill")
        # Called with the writing thread's ident after each spill file (tests watch it).
        self.on_spill: Callable[[int], None] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._mem)

    def owner_bytes(self, owner: str) -> int:
        """Bytes held in memory for one owner."""
        return self._owner_bytes[owner]

    def claim(self, key: StoreKey) -> SavedSequence | None:
        """Mark `key` as generating and return what it may continue; 409 if it is busy.

        The mark holds until `release`, which the engine calls once it is done with the
        request, so no second request can run under the same id meanwhile.
        """
        now = time.time()
        with self._lock:
            if key in self._busy:
                raise IdBusy(
                    f"request_id {key[1]!r} is being generated right now", subject="request_id"
                )
            self._expire(now)
            self._busy.add(key)
            entry = self._mem.get(key)
            if entry is not None:
                self._mem.move_to_end(key)
                entry.used = now
            # Evicted but not yet on disk: the in-memory copy (written before it goes).
            pending = self._pending.get(key)
        if entry is not None:
            seq: SavedSequence | None = entry.seq
        elif pending is not None:
            seq = pending
        else:
            seq = self._load_spilled(key, now)
        with self._lock:
            if seq is None:
                self.misses += 1
            else:
                self.hits += 1
        return seq

    def release(self, key: StoreKey, entry: SavedSequence | None) -> None:
        """End a generation under `key`, keeping `entry` (None keeps the previous one)."""
        evicted: list[tuple[StoreKey, SavedSequence]] = []
        with self._lock:
            self._busy.discard(key)
            if entry is None:
                return
            self._drop(key)
            self._mem[key] = _Entry(entry, time.time())
            self._bytes += entry.nbytes
            self._owner_bytes[key[0]] += entry.nbytes
            owner = key[0]
            # The owner's own quota first: its oldest entries go, never another owner's.
            while self._owner_bytes[owner] > self.owner_max_bytes:
                evicted.append(self._evict(next(k for k in self._mem if k[0] == owner)))
            while self._bytes > self.max_bytes and self._mem:
                # Over the total: the oldest entry of the owner holding the most goes.
                top = max(self._owner_bytes, key=lambda o: self._owner_bytes[o])
                evicted.append(self._evict(next(k for k in self._mem if k[0] == top)))
            # Handed to the writer thread under the lock: a delete after this sees them.
            for k, e in evicted:
                self._queue_spill(k, e)

    def delete(self, key: StoreKey) -> bool:
        """Forget `key` in memory and on disk; False when there was nothing; 409 while busy.

        A spill of `key` in progress finishes first (its file is then removed); one queued
        and not started yet writes nothing."""
        with self._lock:
            if key in self._busy:
                raise IdBusy(
                    f"request_id {key[1]!r} is being generated right now", subject="request_id"
                )
            found = self._drop(key) is not None
            found = self._pending.pop(key, None) is not None or found
        if self.spill_dir is not None:
            with self._io:
                path = self._path(key)
                if path.exists():
                    found = found or read_entry(path, key) is not None
                    path.unlink(missing_ok=True)
        return found

    def discard(self, key: StoreKey) -> None:
        """Forget `key` if it is not generating (its owner deleted what it belonged to)."""
        with contextlib.suppress(IdBusy):
            self.delete(key)

    def persist(self) -> int:
        """Write every in-memory entry to the spill directory; returns how many were written."""
        if self.spill_dir is None:
            return 0
        self.flush()
        with self._lock:
            items = [(k, e.seq) for k, e in self._mem.items()]
        for k, e in items:
            with self._io:
                with self._lock:
                    current = self._mem.get(k)
                    if current is None or current.seq is not e:
                        continue  # deleted or replaced meanwhile
                self._spill(k, e)
        return len(items)

    def flush(self) -> None:
        """Wait until every spill queued so far is on disk (or was dropped)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def _drop(self, key: StoreKey) -> _Entry | None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._bytes -= old.seq.nbytes
            self._owner_bytes[key[0]] -= old.seq.nbytes
            if self._owner_bytes[key[0]] <= 0:
                del self._owner_bytes[key[0]]
        return old

    def _evict(self, key: StoreKey) -> tuple[StoreKey, SavedSequence]:
        old = self._drop(key)
        assert old is not None
        self.evictions += 1
        return key, old.seq

    def _expire(self, now: float) -> None:
        if self.ttl is None:
            return
        for k in [k for k, e in self._mem.items() if now - e.used > self.ttl]:
            if k not in self._busy:
                self._drop(k)
                self.expired += 1

    # ---- spill ----------------------------------------------------------------------

    def _path(self, key: StoreKey) -> Path:
        assert self.spill_dir is not None
        digest = hashlib.sha256(json.dumps(list(key)).encode()).hexdigest()
        return self.spill_dir / (digest + _SUFFIX)

    def _queue_spill(self, key: StoreKey, entry: SavedSequence) -> None:
        """(Under `_lock`) keep `entry` readable and have the writer thread spill it."""
        if self._writer is None:
            return
        self._pending[key] = entry
        fut: Future[None] = self._writer.submit(self._spill_pending, key, entry)
        fut.add_done_callback(_log_failure)

    def _spill_pending(self, key: StoreKey, entry: SavedSequence) -> None:
        """The writer thread: write `entry` unless it was deleted or replaced meanwhile."""
        with self._io:
            with self._lock:
                if self._pending.get(key) is not entry:
                    return
            try:
                self._spill(key, entry)
            finally:
                with self._lock:
                    if self._pending.get(key) is entry:
                        del self._pending[key]

    def _spill(self, key: StoreKey, entry: SavedSequence) -> None:
        if self.spill_dir is not None and write_entry(self._path(key), key, entry):
            if self.on_spill is not None:
                self.on_spill(threading.get_ident())
            self._trim_spill()

    def _load_spilled(self, key: StoreKey, now: float) -> SavedSequence | None:
        if self.spill_dir is None:
            return None
        # No `_io` here: files are renamed into place whole, and a delete cannot run while
        # the caller's claim holds the id (nor wait on another id's fsync on the event loop).
        path = self._path(key)
        try:
            if self.ttl is not None and now - path.stat().st_mtime > self.ttl:
                path.unlink(missing_ok=True)
                return None
        except OSError:
            return None
        return read_entry(path, key)

    def _trim_spill(self) -> None:
        assert self.spill_dir is not None
        try:
            files = sorted(self.spill_dir.glob("*" + _SUFFIX), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            for p in files:
                if total <= self.spill_max_bytes:
                    break
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
        except OSError as exc:  # a file vanished under us (another trim): next time
            log.debug("trimming the spill directory: %s", exc)


def _log_failure(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("spilling a sequence failed: %s", exc)


def write_entry(path: Path, key: StoreKey, entry: SavedSequence) -> bool:
    """Write one self-checking spill file atomically; False (logged) when it failed."""
    state = entry.state or b""
    header = json.dumps(
        {
            "key": list(key),
            "tokens": list(entry.tokens),
            "pending": list(entry.pending),
            "n_prompt": entry.n_prompt,
            "finished": entry.finished,
            "exact": entry.exact,
            "tail": entry.tail.hex(),
            "lora": [list(pair) for pair in entry.lora],
            "model_id": entry.model_id,
            "jumps": [[j.start, j.cells, j.advance] for j in entry.jumps],
            "has_state": entry.state is not None,
            "kv_sha256": hashlib.sha256(state).hexdigest(),
        }
    ).encode()
    tmp = path.with_suffix(f".tmp{threading.get_ident()}")
    try:
        # One file, renamed into place: a crash leaves the old entry or the new one,
        # never tokens of one beside the KV of another.
        with tmp.open("wb") as f:
            f.write(_MAGIC + struct.pack("<I", len(header)) + header + state)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not spill a sequence: %s", exc)
        tmp.unlink(missing_ok=True)
        return False
    return True


def read_entry(path: Path, key: StoreKey) -> SavedSequence | None:
    """The sequence a spill file holds under `key`; None when absent, foreign or corrupt."""
    try:
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            return None
        (n,) = struct.unpack_from("<I", data, len(_MAGIC))
        start = len(_MAGIC) + 4
        meta = json.loads(data[start : start + n])
        state = data[start + n :]
        if meta.get("key") != list(key):
            return None
        if hashlib.sha256(state).hexdigest() != meta["kv_sha256"]:
            log.warning("a spilled sequence is corrupt; ignored")
            return None
        return SavedSequence(
            tokens=tuple(meta["tokens"]),
            pending=tuple(meta["pending"]),
            n_prompt=int(meta["n_prompt"]),
            state=state if meta.get("has_state", True) else None,
            finished=bool(meta.get("finished", False)),
            exact=int(meta.get("exact", 0)),
            tail=bytes.fromhex(meta.get("tail", "")),
            lora=tuple((str(n), float(s)) for n, s in meta.get("lora", [])),
            model_id=str(meta.get("model_id", "")),
            jumps=tuple(Jump(int(a), int(b), int(c)) for a, b, c in meta.get("jumps", [])),
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
