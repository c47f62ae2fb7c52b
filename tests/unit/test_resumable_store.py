"""The resumable-stream store on its own: replay from any offset, live following, a bounded
recording, one owner per stream, the per-key cap, expiry, and a stop that ends the source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from daemon.api.resumable import StreamStore
from daemon.core.watch import RequestRecord


class Source:
    """Chunks released one by one by the test (`give`), and whether it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def give(self, *chunks: bytes | None) -> None:
        for c in chunks:
            self.queue.put_nowait(c)

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            while (chunk := await self.queue.get()) is not None:
                yield chunk
        finally:
            self.closed = True


async def _all(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in it])


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _http(owner: str = "alpha") -> RequestRecord:
    return RequestRecord(timeout=None, owner=owner)


def test_replay_follow_and_offsets() -> None:
    async def run() -> None:
        records: set[RequestRecord] = set()
        store = StreamStore(records)
        src = Source()
        session = store.start("alpha", "c1", src.stream(), _http())
        live = asyncio.create_task(_all(session.read(0)))
        src.give(b"data: 1\n\n", b"data: 2\n\n")
        await _settle()
        assert records == {session.record}  # a request in flight, for the drain
        assert store.lookup("alpha", ["c1"])[0]["is_done"] is False
        late = asyncio.create_task(_all(session.read(9)))
        src.give(b"data: 3\n\n", None)
        assert await live == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
        assert await late == b"data: 2\n\ndata: 3\n\n"
        assert await _all(session.read(0)) == await live  # replayed after the end
        assert await _all(session.read(27)) == b""
        info = store.lookup("alpha", ["c1", "nope"])
        assert [(i["conversation_id"], i["is_done"], i["total_bytes"]) for i in info] == [
            ("c1", True, 27)
        ]
        assert records == set() and src.closed

    asyncio.run(run())


def test_streams_are_their_owners_alone() -> None:
    async def run() -> None:
        store = StreamStore(set())
        src = Source()
        store.start("alpha", "c1", src.stream(), _http())
        src.give(b"x", None)
        await _settle()
        assert store.get("beta", "c1") is None and store.lookup("beta", ["c1"]) == []
        store.stop("beta", "c1")  # another key's stop finds nothing
        assert store.get("alpha", "c1") is not None
        # an id also matches its per-model variants, for its owner only
        src2 = Source()
        store.start("alpha", "c2::org/model:Q8_0", src2.stream(), _http())
        assert [i["conversation_id"] for i in store.lookup("alpha", ["c2"])] == [
            "c2::org/model:Q8_0"
        ]
        assert store.lookup("beta", ["c2"]) == []
        await store.close()

    asyncio.run(run())


def test_a_bounded_recording_refuses_lost_offsets() -> None:
    async def run() -> None:
        store = StreamStore(set(), max_bytes=10)
        src = Source()
        session = store.start("alpha", "c", src.stream(), _http())
        src.give(b"0123456789", b"abcdef", None)
        await _settle()
        assert session.dropped == 6 and session.size == 16
        assert await _all(session.read(6)) == b"6789abcdef"
        assert await _all(session.read(2)) == b""  # cut: the reader must restart

    asyncio.run(run())


def test_stop_ends_the_generation_and_forgets_it() -> None:
    async def run() -> None:
        records: set[RequestRecord] = set()
        store = StreamStore(records)
        src = Source()
        session = store.start("alpha", "c", src.stream(), _http())
        reader = asyncio.create_task(_all(session.read(0)))
        src.give(b"a")
        await _settle()
        store.stop("alpha", "c")
        assert await asyncio.wait_for(reader, 5) == b"a"  # the live reader ends too
        await _settle()
        assert src.closed and records == set() and store.get("alpha", "c") is None
        # the same id again replaces a live stream, stopping the old one
        first, second = Source(), Source()
        store.start("alpha", "d", first.stream(), _http())
        first.give(b"1")
        await _settle()
        store.start("alpha", "d", second.stream(), _http())
        await _settle()
        assert first.closed and not second.closed
        await store.close()
        assert second.closed

    asyncio.run(run())


def test_per_key_cap_and_expiry() -> None:
    async def run() -> None:
        store = StreamStore(set(), per_key=2, ttl=0.05)
        sources = [Source() for _ in range(3)]
        store.start("alpha", "a", sources[0].stream(), _http())
        store.start("alpha", "b", sources[1].stream(), _http())
        sources[1].give(None)  # b ends: the oldest *finished* stream goes first
        await _settle()
        store.start("beta", "x", Source().stream(), _http("beta"))  # other keys count apart
        store.start("alpha", "c", sources[2].stream(), _http())
        await _settle()
        assert store.get("alpha", "b") is None
        assert store.get("alpha", "a") is not None and store.get("alpha", "c") is not None
        store.start("alpha", "d", Source().stream(), _http())  # all live: the oldest stops
        await _settle()
        assert store.get("alpha", "a") is None and sources[0].closed
        sources[2].give(None)
        await _settle()
        await asyncio.sleep(0.1)
        assert store.get("alpha", "c") is None  # ended more than ttl ago
        await store.close()

    asyncio.run(run())


def test_leases_move_to_the_detached_request() -> None:
    async def run() -> None:
        released: list[str] = []
        http = _http()
        http.leases.add(lambda: released.append("model"))
        store = StreamStore(set())
        src = Source()
        store.start("alpha", "c", src.stream(), http)
        http.leases.close()  # the HTTP request ends (its client hung up): nothing released
        assert released == []
        src.give(b"x", None)
        await _settle()
        assert released == ["model"]  # released when the generation's stream ended

    asyncio.run(run())
