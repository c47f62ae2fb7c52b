"""The request_id store: byte-bounded LRU, spill to disk, busy ids, owner isolation."""

import threading
import time
from pathlib import Path

import pytest

from daemon.engine.caches.cache import SequenceStore
from daemon.engine.errors import IdBusy
from daemon.engine.types import SavedSequence


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
    with pytest.raises(IdBusy):
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
    store.flush()
    assert sum(p.stat().st_size for p in tmp_path.glob("*.seq")) <= 2_500


def test_one_owner_cannot_evict_another(tmp_path: Path) -> None:
    """Per-owner quota: a burst of one key evicts that key's own entries only."""
    store = SequenceStore(10_000, owner_max_bytes=3_000)
    store.claim(("bob", "keep"))
    store.release(("bob", "keep"), entry(9))
    for i in range(20):
        store.claim(("alice", str(i)))
        store.release(("alice", str(i)), entry(i))
    assert store.owner_bytes("alice") <= 3_000
    assert store.claim(("bob", "keep")) == entry(9)
    assert store.claim(("alice", "19")) == entry(19)
    assert store.evictions >= 17


def test_ttl_expires_unused_entries(tmp_path: Path) -> None:
    store = SequenceStore(10_000, ttl=0.01, spill_dir=tmp_path)
    store.claim(("k", "a"))
    store.release(("k", "a"), entry(1))
    store.persist()
    time.sleep(0.05)
    assert store.claim(("k", "a")) is None  # gone from memory and from disk
    assert not list(tmp_path.glob("*.seq"))


def test_delete_only_the_owners_entry(tmp_path: Path) -> None:
    store = SequenceStore(10_000, spill_dir=tmp_path)
    store.claim(("alice", "x"))
    store.release(("alice", "x"), entry(1))
    store.persist()
    assert not store.delete(("bob", "x"))
    store.claim(("alice", "busy"))
    with pytest.raises(IdBusy):
        store.delete(("alice", "busy"))
    assert store.delete(("alice", "x"))
    assert store.claim(("alice", "x")) is None
    assert SequenceStore(10_000, spill_dir=tmp_path).claim(("alice", "x")) is None


def test_a_torn_spill_file_is_never_read(tmp_path: Path) -> None:
    """Tokens and KV live in one checksummed file: a crash mid-write cannot pair them wrong."""
    store = SequenceStore(10_000, spill_dir=tmp_path)
    store.claim(("k", "a"))
    store.release(("k", "a"), entry(1))
    store.persist()
    (path,) = tmp_path.glob("*.seq")
    data = path.read_bytes()
    path.write_bytes(data[:-10] + bytes(10))  # the KV bytes of another write
    assert SequenceStore(10_000, spill_dir=tmp_path).claim(("k", "a")) is None
    path.write_bytes(data[: len(data) // 2])  # cut short
    assert SequenceStore(10_000, spill_dir=tmp_path).claim(("k", "a")) is None


def test_counters_count() -> None:
    store = SequenceStore(1_500)
    assert store.claim(("k", "a")) is None
    store.release(("k", "a"), entry(1))
    store.claim(("k", "a"))
    store.release(("k", "a"), None)
    store.claim(("k", "b"))
    store.release(("k", "b"), entry(2))
    assert (store.hits, store.misses, store.evictions, len(store)) == (1, 2, 1, 1)
    assert store.nbytes == entry(2).nbytes


def test_the_tail_of_a_cut_character_survives_a_spill(tmp_path: Path) -> None:
    store = SequenceStore(0, spill_dir=tmp_path)
    e = SavedSequence(tokens=(1,), pending=(2,), n_prompt=1, state=None, tail=b"\xe2\x82")
    store.claim(("k", "t"))
    store.release(("k", "t"), e)
    assert store.claim(("k", "t")) == e


def test_spill_runs_off_the_releasing_thread(tmp_path: Path) -> None:
    """An eviction's fsync happens on the store's writer thread, never on the thread that
    released the entry (the scheduler); until then the entry is read from memory."""
    store = SequenceStore(1_500, spill_dir=tmp_path)
    writers: list[int] = []
    gate = threading.Event()

    def slow_spill(ident: int) -> None:
        writers.append(ident)

    store.on_spill = slow_spill
    # Hold the writer at its lock: the evicted entry is pending, yet readable.
    with store._io:
        for i in range(3):
            store.claim(("k", str(i)))
            store.release(("k", str(i)), entry(i))
        assert not writers and not list(tmp_path.glob("*.seq"))
        assert store.claim(("k", "0")) == entry(0)  # pending: the in-memory copy
        store.release(("k", "0"), None)
        gate.set()
    store.flush()
    assert writers and threading.get_ident() not in writers
    assert list(tmp_path.glob("*.seq"))
    assert SequenceStore(1_500, spill_dir=tmp_path).claim(("k", "0")) == entry(0)


def _race_once(d: Path, delay: float) -> None:
    store = SequenceStore(1_500, spill_dir=d)
    key = ("k", "victim")
    store.claim(key)
    store.release(key, entry(1))
    go = threading.Barrier(2)
    results: list[bool] = []

    def evict() -> None:
        go.wait()
        store.claim(("k", "other"))
        store.release(("k", "other"), entry(2))  # evicts `victim`: a spill is queued

    def delete() -> None:
        go.wait()
        time.sleep(delay)
        results.append(store.delete(key))

    threads = [threading.Thread(target=evict), threading.Thread(target=delete)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.flush()
    assert results == [True]
    assert store.claim(key) is None
    store.release(key, None)
    assert not store._pending
    assert store.delete(("k", "other"))
    store.flush()
    assert not list(d.glob("*.seq"))
    assert not list(d.glob("*.tmp*"))


def test_delete_and_spill_of_one_id_leave_nothing_behind(tmp_path: Path) -> None:
    """A delete racing the spill of the same id: afterwards no file and no entry, whichever
    came first (repeated, with the delete on another thread)."""
    for i in range(40):
        _race_once(tmp_path / str(i), (i % 4) * 0.0003)
