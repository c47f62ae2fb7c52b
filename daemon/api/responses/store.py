"""Stored responses: what GET/DELETE and `previous_response_id` need, per API key.

The KV state of a stored response lives in the model's request_id store (same bounds and
spill as /api/generate) under `kv_key`; this store keeps the JSON side, bounded by count.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from daemon.engine.cache import StoreKey

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


class ResponseStore:
    """An LRU of stored responses keyed by (owner, response id)."""

    def __init__(self, max_entries: int = MAX_RESPONSES) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[StoreKey, StoredResponse] = OrderedDict()

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The caller's response, or None (another key's response is as good as absent)."""
        entry = self._items.get((owner, response_id))
        if entry is not None:
            self._items.move_to_end((owner, response_id))
        return entry

    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        """Keep a response, dropping the least recently used beyond the bound."""
        self._items[(owner, response_id)] = entry
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def delete(self, owner: str, response_id: str) -> StoredResponse | None:
        """Forget a response; returns what was forgotten."""
        return self._items.pop((owner, response_id), None)
