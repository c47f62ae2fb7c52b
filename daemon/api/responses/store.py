"""Stored responses: what GET/DELETE and `previous_response_id` need, per API key.

The KV state of a stored response lives in the model's request_id store (same bounds and
spill as /api/generate) under `kv_key`; this store keeps the JSON side, bounded by count in
all and per API key (as the request_id store bounds bytes per key): one key storing many
responses evicts its own oldest ones, never another key's conversations.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from daemon.engine.caches.cache import StoreKey

MAX_RESPONSES = 4096


def kv_key(owner: str, response_id: str) -> StoreKey:
    """The request_id store key holding a stored response's conversation state."""
    return (owner, f"response:{response_id}")


@dataclass
class StoredResponse:
    """One finished response and the conversation it closes."""

    body: dict[str, Any]  # the response object, as GET returns it
    input_items: list[dict[str, Any]]  # this turn's input, with ids
    history: list[dict[str, Any]]  # chat messages of the conversation so far (no instructions)
    model: str  # the loaded model's name (KV state is per model)
    covered: str  # the text the kept KV state holds: rendered prompt + output with specials
    tokens: list[int]  # the tokens the kept KV state holds (prompt + output)
    # The model file's identity (LoadedModel.identity): a chain continued on another file
    # under the same name is recomputed from its text history, never resumed from this KV.
    model_identity: str = ""


class ResponseStore:
    """An LRU of stored responses keyed by (owner, response id), bounded in all and per owner.

    `owner_max_entries` (default: a quarter of `max_entries`) caps one API key's responses:
    past it, that key's least recently used response goes. Past `max_entries` in all, the
    least recently used response of the key holding the most goes.
    """

    def __init__(self, max_entries: int = MAX_RESPONSES, owner_max_entries: int | None = None):
        self.max_entries = max_entries
        self.owner_max_entries = (
            max(1, max_entries // 4) if owner_max_entries is None else owner_max_entries
        )
        self._items: OrderedDict[StoreKey, StoredResponse] = OrderedDict()
        self._owned: Counter[str] = Counter()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def owned(self, owner: str) -> int:
        """Responses kept for one owner."""
        return self._owned[owner]

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The caller's response, or None (another key's response is as good as absent)."""
        entry = self._items.get((owner, response_id))
        if entry is not None:
            self._items.move_to_end((owner, response_id))
        return entry

    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        """Keep a response: the owner's own oldest go past its quota, then the oldest of
        the owner holding the most past the total bound."""
        key = (owner, response_id)
        if key in self._items:
            self._items.move_to_end(key)
        else:
            self._owned[owner] += 1
        self._items[key] = entry
        while self._owned[owner] > self.owner_max_entries:
            self._evict(next(k for k in self._items if k[0] == owner))
        while len(self._items) > self.max_entries:
            top = max(self._owned, key=lambda o: self._owned[o])
            self._evict(next(k for k in self._items if k[0] == top))

    def delete(self, owner: str, response_id: str) -> StoredResponse | None:
        """Forget a response; returns what was forgotten."""
        entry = self._items.pop((owner, response_id), None)
        if entry is not None:
            self._release(owner)
        return entry

    def _evict(self, key: StoreKey) -> None:
        del self._items[key]
        self._release(key[0])
        self.evictions += 1

    def _release(self, owner: str) -> None:
        self._owned[owner] -= 1
        if self._owned[owner] <= 0:
            del self._owned[owner]
