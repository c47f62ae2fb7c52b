"""The prompt cache's own rules: longest prefix, owners, sharing, byte bound, LRU, spill."""

from __future__ import annotations

from pathlib import Path

from daemon.engine.caches.prompt_cache import BLOCK, PromptCache


def toks(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 31) % 50000 for i in range(n)]


def state(tokens: list[int]) -> bytes:
    """A stand-in KV state that names its tokens, so a load can be checked."""
    return repr(tokens).encode()


def test_longest_usable_prefix_wins() -> None:
    pc = PromptCache(1 << 20)
    base = toks(1, 3 * BLOCK)
    short, long_ = base[: BLOCK + 5], base + toks(2, BLOCK)
    assert pc.save("a", short, lambda: state(short))
    assert pc.save("a", toks(9, 2 * BLOCK), lambda: state(toks(9, 2 * BLOCK)))
    prompt = base + toks(3, 10)
    hit = pc.lookup("a", prompt)
    assert hit is not None and hit.tokens == BLOCK + 5  # beyond the block boundary
    assert pc.save("a", long_, lambda: state(long_))
    hit = pc.lookup("a", prompt)
    assert hit is not None and hit.tokens == len(base)
    assert pc.load(hit) == state(long_)
    assert pc.lookup("a", toks(4, 2 * BLOCK)) is None
    assert pc.misses == 1


def test_a_prefix_entry_is_replaced_and_a_covered_one_not_saved() -> None:
    pc = PromptCache(1 << 20)
    t = toks(1, 2 * BLOCK)
    assert pc.save("a", t, lambda: state(t))
    longer = t + toks(2, BLOCK)
    assert pc.save("a", longer, lambda: state(longer))
    assert len(pc) == 1  # the conversation keeps its latest entry only
    assert not pc.save("a", t, lambda: state(t))  # already held, inside the longer one
    assert pc.save("b", t, lambda: state(t))  # another owner's copy is its own
    assert len(pc) == 2


def test_another_key_never_hits_unless_shared() -> None:
    t = toks(1, 4 * BLOCK)
    prompt = [*t, 1, 2, 3]
    isolated = PromptCache(1 << 20)
    isolated.save("a", t, lambda: state(t))
    assert isolated.lookup("b", prompt) is None
    assert isolated.lookup("a", prompt) is not None
    capped = PromptCache(1 << 20, share_tokens=2 * BLOCK)
    capped.save("a", t, lambda: state(t))
    hit = capped.lookup("b", prompt)
    assert hit is not None and hit.tokens == 2 * BLOCK
    everything = PromptCache(1 << 20, share_tokens=-1)
    everything.save("a", t, lambda: state(t))
    hit = everything.lookup("b", prompt)
    assert hit is not None and hit.tokens == len(t)


def test_own_entry_beats_a_capped_foreign_one() -> None:
    pc = PromptCache(1 << 20, share_tokens=BLOCK)
    t = toks(1, 6 * BLOCK)
    pc.save("a", t, lambda: state(t))
    own = t[: 3 * BLOCK + 2]
    pc.save("b", own, lambda: state(own))
    hit = pc.lookup("b", [*t, 5])
    assert hit is not None and hit.entry.owner == "b" and hit.tokens == len(own)


def test_byte_bound_holds_and_lru_evicts() -> None:
    one = 2 * BLOCK
    size = 10_000
    pc = PromptCache(3 * (size + one * 8 + 2 * 16 + 512))
    seqs = [toks(i, one) for i in range(5)]
    for s in seqs[:3]:
        assert pc.save("a", s, lambda: b"x" * size)
    assert pc.lookup("a", seqs[0] + [1]) is not None and pc.evictions == 0
    pc.load(pc.lookup("a", seqs[0] + [1]))  # type: ignore[arg-type]  # seqs[0] is now recent
    for s in seqs[3:]:
        pc.save("a", s, lambda: b"x" * size)
        assert pc.nbytes <= pc.max_bytes
    assert pc.evictions == 2
    assert pc.lookup("a", seqs[1] + [1]) is None  # least recently used went first
    assert pc.lookup("a", seqs[0] + [1]) is not None
    assert not pc.save("a", toks(8, one), lambda: b"x" * pc.max_bytes)  # never fits


def test_off_keeps_nothing() -> None:
    pc = PromptCache(0)
    t = toks(1, 2 * BLOCK)
    assert not pc.save("a", t, lambda: state(t))
    assert pc.lookup("a", t) is None and pc.nbytes == 0


def test_spill_to_disk_and_back_then_clear(tmp_path: Path) -> None:
    one = 2 * BLOCK
    pc = PromptCache(25_000, spill_dir=tmp_path, spill_max_bytes=25_000)
    seqs = [toks(i, one) for i in range(3)]
    for s in seqs:
        pc.save("a", s, lambda s=s: state(s) + b"x" * 10_000)  # type: ignore[misc]
    pc.flush()  # spill files are written by the cache's writer thread
    assert pc.evictions >= 1 and pc.disk_bytes > 0 and pc.nbytes <= pc.max_bytes
    hit = pc.lookup("a", seqs[0] + [7])
    assert hit is not None and hit.entry.state is None
    assert pc.load(hit) == state(seqs[0]) + b"x" * 10_000
    files = list(tmp_path.rglob("*.seq"))
    assert files
    files[0].write_bytes(b"garbage")  # a corrupt spill file is a miss, never wrong KV
    for s in seqs:
        h = pc.lookup("a", [*s, 7])
        if h is not None and h.entry.path == files[0]:
            assert pc.load(h) is None
    pc.save("a", toks(5, one), lambda: b"y" * 20_000)
    pc.flush()
    assert pc.disk_bytes <= pc.spill_max_bytes
    pc.clear()
    assert not list(tmp_path.iterdir()) and len(pc) == 0


def test_an_entry_serves_only_its_own_adapter_set() -> None:
    """KV computed under LoRA adapters is another KV: never restored for another set, even
    for the same key or with sharing on; each set keeps its own entry of the same tokens."""
    t = toks(5, 3 * BLOCK)
    prompt = [*t, 7, 8, 9]
    lora_a = (("a", 1.0),)
    pc = PromptCache(1 << 20, share_tokens=-1)
    assert pc.save("k", t, lambda: b"under-a", lora_a)
    assert pc.lookup("k", prompt) is None  # the base model
    assert pc.lookup("k", prompt, (("a", 0.5),)) is None  # another scale is another set
    hit = pc.lookup("other-key", prompt, lora_a)
    assert hit is not None and pc.load(hit) == b"under-a"
    assert pc.save("k", t, lambda: b"base")  # not "already held": that entry is a's
    hit = pc.lookup("k", prompt)
    assert hit is not None and pc.load(hit) == b"base"
    assert len(pc) == 2


def test_a_limit_from_outside_shrinks_lru_first_and_lifts() -> None:
    """The registry's share of --max-models-memory: entries beyond it go, least recently
    used first; saves respect it; lifted, the configured bound holds again."""
    one = 2 * BLOCK
    size = 10_000
    entry = size + one * 8 + 2 * 16 + 512
    pc = PromptCache(4 * entry)
    seqs = [toks(i, one) for i in range(4)]
    for s in seqs:
        assert pc.save("a", s, lambda: b"x" * size)
    pc.load(pc.lookup("a", seqs[0] + [1]))  # type: ignore[arg-type]  # seqs[0] is now recent
    pc.set_limit(2 * entry)
    assert pc.nbytes <= 2 * entry and len(pc) == 2 and pc.bound == 2 * entry
    assert pc.lookup("a", seqs[0] + [1]) is not None  # the recent one stayed
    assert pc.lookup("a", seqs[1] + [1]) is None
    assert pc.save("a", toks(7, one), lambda: b"x" * size)
    assert pc.nbytes <= 2 * entry
    pc.set_limit(0)  # no room at all: nothing kept, nothing saved
    assert pc.nbytes == 0 and not pc.save("a", toks(8, one), lambda: b"x" * size)
    pc.set_limit(100 * entry)  # above the configured bound: that one holds
    assert pc.bound == 4 * entry
    pc.set_limit(None)
    assert pc.save("a", toks(9, one), lambda: b"x" * size) and pc.bound == pc.max_bytes


def test_spills_are_written_off_the_callers_thread(tmp_path: Path) -> None:
    """The scheduler thread evicts; the cache's writer thread writes (file I/O and fsync
    never stall a step). Until the file is complete the state is read from memory, and an
    entry forgotten meanwhile leaves no file behind."""
    import threading

    one = 2 * BLOCK
    pc = PromptCache(25_000, spill_dir=tmp_path, spill_max_bytes=10**9)
    writers: list[int] = []
    gate = threading.Event()

    def record(ident: int) -> None:
        writers.append(ident)

    pc.on_spill = record
    block = pc._writer
    assert block is not None
    block.submit(gate.wait)  # hold the writer: the next spill waits behind this
    seqs = [toks(i, one) for i in range(3)]
    for s in seqs:
        pc.save("a", s, lambda s=s: state(s) + b"x" * 10_000)  # type: ignore[misc]
    assert pc.evictions >= 1 and pc.disk_bytes == 0  # evicted, not yet written
    hit = pc.lookup("a", seqs[0] + [7])
    assert hit is not None and pc.load(hit) == state(seqs[0]) + b"x" * 10_000  # from memory
    pc.save("a", [*seqs[0], *toks(9, one)], lambda: b"longer")  # supersedes the pending one
    gate.set()
    pc.flush()
    assert writers and threading.get_ident() not in writers
    written = {p.name for p in tmp_path.rglob("*.seq")}
    assert f"{hit.entry.id}.seq" not in written  # the forgotten entry left no file
    again = pc.lookup("a", seqs[0] + [7])  # now the superseding entry answers
    assert again is not None and again.entry is not hit.entry
    pc.clear()
