"""The request_id store: byte-bounded LRU, spill to disk, busy ids, owner isolation."""

from pathlib import Path

import pytest

from daemon.engine.cache import SequenceStore
from daemon.engine.types import SavedSequence
from daemon.errors import Conflict


def entry(n: int, size: int = 1000) -> SavedSequence:
    return SavedSequence(tokens=(1, 2, n), pending=(n,), n_prompt=2, state=bytes([n]) * size)


def test_claim_release_roundtrip() -> None:
    store = SequenceStore(10_000)
    assert store.claim(("k", "a")) is None
    store.release(("k", "a"), entry(1))
    got = store.claim(("k", "a"))
    assert got == entry(1)
    store.release(("k", "a"), None)  # a failed continuation keeps the old entry
    assert store.claim(("k", "a")) == entry(1)


def test_busy_id_conflicts() -> None:
    store = SequenceStore(10_000)
    store.claim(("k", "a"))
    with pytest.raises(Conflict):
        store.claim(("k", "a"))
    store.release(("k", "a"), entry(1))
    store.claim(("k", "a"))


def test_owners_are_isolated() -> None:
    store = SequenceStore(10_000)
    store.claim(("alice", "id"))
    store.release(("alice", "id"), entry(1))
    assert store.claim(("bob", "id")) is None


def test_lru_bound_in_bytes() -> None:
    store = SequenceStore(2_500)
    for i in range(3):
        store.claim(("k", str(i)))
        store.release(("k", str(i)), entry(i))
    assert store.nbytes <= 2_500
    assert store.claim(("k", "0")) is None  # the least recently used went first
    assert store.claim(("k", "2")) == entry(2)


def test_spill_and_persist(tmp_path: Path) -> None:
    store = SequenceStore(1_500, spill_dir=tmp_path)
    for i in range(3):
        store.claim(("k", str(i)))
        store.release(("k", str(i)), entry(i))
    assert store.claim(("k", "0")) == entry(0)  # evicted from memory, read back from disk
    store.release(("k", "0"), None)
    assert store.persist() >= 1
    fresh = SequenceStore(1_500, spill_dir=tmp_path)  # a restart
    assert fresh.claim(("k", "2")) == entry(2)
    assert fresh.claim(("other", "2")) is None


def test_spill_directory_is_bounded(tmp_path: Path) -> None:
    store = SequenceStore(0, spill_dir=tmp_path, spill_max_bytes=2_500)
    for i in range(5):
        store.claim(("k", str(i)))
        store.release(("k", str(i)), entry(i))
    assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) <= 2_500
