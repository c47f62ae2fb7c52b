"""A lean streaming client for the benchmarks: chat requests over HTTP/1.1 with SSE.

On a 2-core machine the load generator shares the cores with llama.cpp's compute threads,
so its own CPU time is taken out of the server's tokens/s. httpx spends ~1.2 ms of CPU per
streamed token here (h11 parsing, anyio); this client reads the chunked body off a blocking
socket, one thread per stream, and still parses every event's JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlsplit

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "the first snow",
    "a desert caravan",
    "a clockmaker",
    "an old library",
    "a river town",
    "a night train",
    "a mountain village",
    "a deep-sea diver",
    "a chess player",
    "a summer storm",
    "a market at dawn",
    "a forgotten garden",
    "a violin maker",
    "a comet",
]


def story_messages(i: int) -> list[dict[str, str]]:
    """The i-th distinct benchmark prompt."""
    return [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]


@dataclass
class StreamResult:
    """One streamed request: when it started and when each content token arrived."""

    start: float
    end: float
    token_times: list[float]
    usage_tokens: int | None = None

    @property
    def ttft(self) -> float:
        return (self.token_times[0] if self.token_times else self.end) - self.start

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's usage figure, else one per content delta."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.token_times)


@dataclass
class Round:
    """One concurrency level, run once."""

    level: int
    wall: float
    results: list[StreamResult] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Aggregate completion tokens/s over the round's wall time (prefill included)."""
        return sum(r.tokens for r in self.results) / self.wall

    @property
    def decode_tokens_per_s(self) -> float:
        """Aggregate tokens/s while every stream is decoding: from the last first token to
        the first end, so that no prompt processing falls inside the window."""
        lo = max(r.token_times[0] for r in self.results)
        hi = min(r.token_times[-1] for r in self.results)
        if hi <= lo:
            return self.tokens_per_s
        n = sum(1 for r in self.results for t in r.token_times if lo < t <= hi)
        return n / (hi - lo)

    @property
    def ttft_p50(self) -> float:
        return statistics.median(r.ttft for r in self.results)


def _chunks(body: BinaryIO) -> Iterator[bytes]:
    """The body of a chunked HTTP/1.1 response, chunk by chunk."""
    while size := int(body.readline().split(b";")[0], 16):
        yield body.read(size)
        body.read(2)


def stream_sync(
    url: str,
    body: dict[str, Any],
    path: str = "/v1/chat/completions",
    key: str | None = None,
) -> StreamResult:
    """POST a streaming (chat) completion; record the arrival time of every content delta.
    `key` is sent as `Authorization: Bearer`.

    A blocking socket read per chunk (in a thread per stream) wakes the client once per
    token; an asyncio client also runs its event loop around each read (~0.2 ms more)."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    start = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: bench\r\n%s"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), auth, len(payload), payload)
        )
        reader = sock.makefile("rb")
        status = reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"server answered {status!r}: {reader.read()!r}")
        chunked = False
        while (line := reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding: chunked")
        result = StreamResult(start, 0.0, [])
        buf = b""
        for data in _chunks(reader) if chunked else iter(lambda: reader.read1(65536), b""):
            buf += data.replace(b"\r\n", b"\n")  # SSE allows CRLF, LF or CR line ends
            *events, buf = buf.split(b"\n\n")
            now = time.perf_counter()
            for ev in events:
                _read_event(ev, now, result)
        result.end = time.perf_counter()
        return result


async def stream(
    url: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> StreamResult:
    """`stream_sync` off the event loop."""
    return await asyncio.to_thread(stream_sync, url, body, path)


def _read_event(event: bytes, now: float, result: StreamResult) -> None:
    for line in event.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            raise RuntimeError(f"stream failed: {ev['error']}")
        choice = ev["choices"][0] if ev.get("choices") else {}
        if choice.get("text") or choice.get("delta", {}).get("content"):
            result.token_times.append(now)
        if ev.get("usage"):
            result.usage_tokens = ev["usage"]["completion_tokens"]


def chat_body(i: int, max_tokens: int, ban: list[int], model: str | None) -> dict[str, Any]:
    """A greedy request for exactly `max_tokens` tokens: end-of-generation tokens are banned
    with logit_bias, so every server does the same work as a raw decode loop."""
    body: dict[str, Any] = {
        "messages": story_messages(i),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(t): -100 for t in ban},
    }
    if model:
        body["model"] = model
    return body


async def run_round(
    url: str, level: int, max_tokens: int, ban: list[int], offset: int, model: str | None = None
) -> Round:
    """`level` concurrent streams with distinct prompts."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=level) as pool:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, stream_sync, url, chat_body(offset + i, max_tokens, ban, model)
                )
                for i in range(level)
            )
        )
        return Round(level, time.perf_counter() - start, list(results))
