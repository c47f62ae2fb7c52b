"""The prompt cache: sequence states kept below the slots, found again by token prefix.

When a slot is about to be refilled, the reusable part of what it held (under --exact only
`Slot.exact`, caches/slot_kv.py) is saved here; a new request restores the longest cached
prefix of its prompt into its slot and prefills only the rest. Entries are indexed by a hash
of their tokens at every `BLOCK` boundary, so a lookup costs one hash per prompt block plus
one token comparison per candidate. Memory is bounded in bytes (LRU); evicted entries spill
to a directory when one is configured (bounded too, written in the request_id store's self-
checking file format), and the directory is removed with the cache. Every entry belongs to
the API key whose request filled it: another key reuses at most `share_tokens` of its
leading tokens (0: none, -1: all), so one key's prompts never speed up, and thereby reveal
themselves to, another key's requests beyond what the operator declared shared (a system
prompt).

The scheduler thread reads and fills it; the registry may lower its bound from the event
loop (`set_limit`: a share of the memory cap), so the entry tables change under a lock.
Spill files are written by a writer thread of the cache's own: an eviction never stalls the
scheduler's step on file I/O and fsync, and the evicted state stays readable from memory
until its file is complete.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import tempfile
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from daemon.engine.caches.cache import read_entry, write_entry
from daemon.engine.decode.slots import common_prefix
from daemon.engine.positions import Jumps
from daemon.engine.types import SavedSequence

AdapterPairs = tuple[tuple[str, float], ...]

log = logging.getLogger("edged.prompt_cache")

F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """Run a PromptCache method under the cache's lock."""

    @wraps(fn)
    def run(self: PromptCache, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return run  # type: ignore[return-value]


# Tokens per index block: prefixes shorter than this are not worth a restore.
BLOCK = 64
# Bookkeeping per entry beyond its state: tokens (8 bytes each in a tuple) and index keys.
_TOKEN_BYTES = 8
_DIGEST_BYTES = 16
_OVERHEAD = 512


@dataclass(eq=False)
class CacheEntry:
    """One saved sequence: its owner's tokens and KV state (in memory or on disk)."""

    id: int
    owner: str
    tokens: tuple[int, ...]
    digests: tuple[bytes, ...]  # index keys of tokens[: (i + 1) * BLOCK]
    state_bytes: int
    state: bytes | None = None  # None once spilled
    path: Path | None = None
    # The LoRA adapter set its KV was computed under: only that set may restore it.
    lora: AdapterPairs = ()
    # Its M-RoPE images (positions.py): where its cells' positions are not their indices.
    jumps: Jumps = ()

    @property
    def nbytes(self) -> int:
        """What the entry costs in memory while its state is there."""
        meta = len(self.tokens) * _TOKEN_BYTES + len(self.digests) * _DIGEST_BYTES + _OVERHEAD
        return meta + (self.state_bytes if self.state is not None else 0)


@dataclass(frozen=True)
class Hit:
    """A usable cached prefix: `tokens` leading prompt tokens of `entry`."""

    entry: CacheEntry
    tokens: int


def block_digests(tokens: tuple[int, ...] | list[int], limit: int | None = None) -> list[bytes]:
    """Hash of every whole-block prefix of `tokens` (at most `limit` blocks)."""
    n = len(tokens) // BLOCK if limit is None else min(limit, len(tokens) // BLOCK)
    h = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    out = []
    for i in range(n):
        h.update(array("i", tokens[i * BLOCK : (i + 1) * BLOCK]).tobytes())
        out.append(h.digest())
    return out


class PromptCache:
    """Bounded LRU of sequence states by owner and token prefix, with optional disk spill."""

    def __init__(
        self,
        max_bytes: int,
        *,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 16 << 30,
        share_tokens: int = 0,
        exact: bool = True,
        name: str = "model",
        identity: str = "",
    ) -> None:
        self.max_bytes = max_bytes
        # Whether only KV computed in multi-token chunks is reused and kept (--exact; the
        # slots follow the same rule, caches/slot_kv.py) or every token's.
        self.exact = exact
        # The model file's identity: spill files carry it and are read back only under it.
        self.identity = identity
        # A lower bound set from outside (the registry's share of --max-models-memory).
        self.limit: int | None = None
        self._lock = threading.Lock()
        self.spill_max_bytes = spill_max_bytes
        self.share_tokens = share_tokens
        self._dir: Path | None = None
        if spill_dir is not None and max_bytes > 0:
            spill_dir.mkdir(parents=True, exist_ok=True)
            # Private to this cache: it belongs to one loaded model and goes with it.
            self._dir = Path(tempfile.mkdtemp(prefix=f"{name.replace('/', '_')}-", dir=spill_dir))
        self._mem: OrderedDict[int, CacheEntry] = OrderedDict()
        self._disk: OrderedDict[int, CacheEntry] = OrderedDict()
        # Evicted entries whose spill file is being written: their state is still here.
        self._pending: dict[int, CacheEntry] = {}
        self._writer: ThreadPoolExecutor | None = None
        if self._dir is not None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="edged-cache-spill")
        # Called with the writing thread's ident after each spill file (tests watch it).
        self.on_spill: Callable[[int], None] | None = None
        self._index: dict[bytes, dict[int, CacheEntry]] = {}
        self._ids = itertools.count()
        self.nbytes = 0
        self.disk_bytes = 0
        self.hits = 0
        self.misses = 0
        self.hit_tokens = 0
        self.saves = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is ever kept."""
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk)

    @property
    def bound(self) -> int:
        """Bytes of memory the entries may take now."""
        return self.max_bytes if self.limit is None else min(self.max_bytes, self.limit)

    @_locked
    def set_limit(self, limit: int | None) -> None:
        """Bound memory below `max_bytes` (None: back to it); least recently used entries go
        (to the spill directory when there is one) until it holds."""
        self.limit = None if limit is None else max(limit, 0)
        while self.nbytes > self.bound and self._mem:
            self._evict(next(iter(self._mem.values())))

    def shareable(self, holder: str, owner: str) -> int | None:
        """Leading tokens `owner` may reuse of what `holder` filled (None: no limit)."""
        if holder == owner or self.share_tokens < 0:
            return None
        return self.share_tokens

    # ---- lookup ---------------------------------------------------------------------

    @_locked
    def lookup(
        self,
        owner: str,
        prompt: list[int],
        lora: AdapterPairs = (),
        fits: Callable[[int, int], bool] | None = None,
    ) -> Hit | None:
        """The entry sharing the longest usable prefix with `prompt`, computed under the
        adapter set `lora` (counted as hit or miss); `fits(entry tokens, shared)` says
        whether the model's memory can resume an entry cut back there (slot_kv.py)."""
        if not self.enabled or len(prompt) < BLOCK:
            return None
        levels: list[dict[int, CacheEntry]] = []
        for d in block_digests(prompt):
            found = self._index.get(d)
            if not found:
                break
            levels.append(found)
        best: Hit | None = None
        seen: set[int] = set()
        # Deepest level first: an entry first met at level i shares fewer than
        # (i + 2) * BLOCK tokens with the prompt, so shallower levels cannot beat `best`.
        for i in range(len(levels) - 1, -1, -1):
            if best is not None and best.tokens >= (i + 2) * BLOCK:
                break
            for e in reversed(levels[i].values()):
                if e.id in seen or e.lora != lora:
                    continue
                seen.add(e.id)
                n = common_prefix(e.tokens, prompt, (i + 1) * BLOCK)
                cap = self.shareable(e.owner, owner)
                if cap is not None:
                    n = min(n, cap)
                if fits is not None and not fits(len(e.tokens), n):
                    continue
                if n >= BLOCK and (best is None or n > best.tokens):
                    best = Hit(e, n)
        if best is None:
            self.misses += 1
        return best

    @_locked
    def load(self, hit: Hit) -> bytes | None:
        """The state of a hit's entry (from memory or disk); None when it is gone."""
        e = hit.entry
        if e.state is not None:  # in memory, or evicted and not yet on disk
            if e.id in self._mem:
                self._mem.move_to_end(e.id)
            return e.state
        if e.path is None:
            return None
        seq = read_entry(e.path, self._spill_key(e))
        if seq is not None and seq.model_id != self.identity:
            seq = None
        if seq is None or seq.state is None:
            self._forget(e)
            return None
        self._disk.move_to_end(e.id)
        return seq.state

    def count_hit(self, tokens: int) -> None:
        """A request restored `tokens` prompt tokens from here."""
        self.hits += 1
        self.hit_tokens += tokens

    def count_miss(self) -> None:
        """A request found an entry but could not use it (its state was gone or refused)."""
        self.misses += 1

    # ---- save -----------------------------------------------------------------------

    @_locked
    def save(
        self,
        owner: str,
        tokens: list[int],
        state: Callable[[], bytes],
        lora: AdapterPairs = (),
        fits: Callable[[int, int], bool] | None = None,
        jumps: Jumps = (),
    ) -> bool:
        """Keep `tokens` (all exact KV, computed under adapters `lora`) of `owner` with the
        state `state()` returns.

        Nothing is saved when an own entry already holds these tokens; own entries that
        are a prefix of them are replaced (a conversation keeps one entry, its latest)
        where `fits(new entry's tokens, old entry's tokens)` says the new one can be cut
        back to the old one's end (not behind a sliding window or into a recurrent state:
        then both stay, as llama-server keeps checkpoints).
        """
        if not self.enabled or len(tokens) < BLOCK:
            return False
        key = tuple(tokens)
        digests = tuple(block_digests(key))
        for e in self._index.get(digests[-1], {}).values():
            if (
                e.owner == owner
                and e.lora == lora
                and len(e.tokens) >= len(key)
                and e.tokens[: len(key)] == key
            ):
                self._touch(e)
                return False  # already held (and perhaps more)
        superseded: dict[int, CacheEntry] = {}
        for d in digests:
            for e in self._index.get(d, {}).values():
                if (
                    e.owner == owner
                    and e.lora == lora
                    and len(e.tokens) < len(key)
                    and key[: len(e.tokens)] == e.tokens
                    and (fits is None or fits(len(key), len(e.tokens)))
                ):
                    superseded[e.id] = e
        data = state()
        entry = CacheEntry(
            next(self._ids), owner, key, digests, len(data), data, lora=lora, jumps=jumps
        )
        if entry.nbytes > self.bound:
            return False
        for e in superseded.values():
            self._forget(e)
        self._mem[entry.id] = entry
        self.nbytes += entry.nbytes
        for d in digests:
            self._index.setdefault(d, {})[entry.id] = entry
        self.saves += 1
        while self.nbytes > self.bound and self._mem:
            self._evict(next(iter(self._mem.values())))
        return True

    def _touch(self, e: CacheEntry) -> None:
        if e.id in self._mem:
            self._mem.move_to_end(e.id)
        elif e.id in self._disk:
            self._disk.move_to_end(e.id)

    def _evict(self, e: CacheEntry) -> None:
        """Memory is over its bound: `e` (least recently used) leaves for disk or for good."""
        self.evictions += 1
        del self._mem[e.id]
        if self._writer is None or e.state_bytes > self.spill_max_bytes:
            self.nbytes -= e.nbytes
            self._unindex(e)
            return
        self.nbytes -= e.state_bytes  # its tokens and index keys stay in memory
        self._pending[e.id] = e
        self._writer.submit(self._spill, e)

    def _spill(self, e: CacheEntry) -> None:
        """Writer thread: put an evicted entry's state on disk, unless it was forgotten
        meanwhile (then its file is removed again)."""
        assert self._dir is not None
        with self._lock:
            if self._pending.get(e.id) is not e:
                return
            state = e.state
        path = self._dir / f"{e.id}.seq"
        seq = SavedSequence(
            e.tokens, (), len(e.tokens), state, exact=len(e.tokens), model_id=self.identity
        )
        ok = write_entry(path, self._spill_key(e), seq)
        if self.on_spill is not None:
            self.on_spill(threading.get_ident())
        with self._lock:
            if self._pending.pop(e.id, None) is not e:  # forgotten while it was written
                path.unlink(missing_ok=True)
                return
            if not ok:
                self.nbytes -= e.nbytes - e.state_bytes
                self._unindex(e)
                return
            e.state, e.path = None, path
            self._disk[e.id] = e
            self.disk_bytes += e.state_bytes
            while self.disk_bytes > self.spill_max_bytes:
                self._forget(next(iter(self._disk.values())))

    def flush(self) -> None:
        """Wait until every spill queued so far is written (or dropped)."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def _spill_key(self, e: CacheEntry) -> tuple[str, str]:
        return ("prompt-cache", f"{self.identity}:{e.id}")

    def _forget(self, e: CacheEntry) -> None:
        """Drop `e` wherever it is."""
        if self._mem.pop(e.id, None) is not None:
            self.nbytes -= e.nbytes
        elif self._pending.pop(e.id, None) is not None:
            self.nbytes -= e.nbytes - e.state_bytes  # the writer removes its file
        elif self._disk.pop(e.id, None) is not None:
            self.nbytes -= e.nbytes
            self.disk_bytes -= e.state_bytes
            if e.path is not None:
                e.path.unlink(missing_ok=True)
        self._unindex(e)

    def _unindex(self, e: CacheEntry) -> None:
        for d in e.digests:
            ids = self._index.get(d)
            if ids is not None:
                ids.pop(e.id, None)
                if not ids:
                    del self._index[d]

    def clear(self, timeout: float = -1) -> bool:
        """Forget everything and remove the spill directory (the model is going away).

        With a `timeout` (seconds), give up when the lock stays taken that long: a thread
        parked inside llama.cpp while saving a state (a lost RPC worker) never lets it go.
        """
        if not self._lock.acquire(timeout=timeout):
            log.warning("the prompt cache is held by a thread that does not return; kept")
            return False
        try:
            self._mem.clear()
            self._disk.clear()
            self._pending.clear()
            self._index.clear()
            self.nbytes = self.disk_bytes = 0
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
        finally:
            self._lock.release()
        if self._writer is not None:  # queued spills find their entries gone
            self._writer.shutdown(wait=False)
            self._writer = None
        return True
