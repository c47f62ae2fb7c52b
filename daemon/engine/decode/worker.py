"""What the generation scheduler and the embedder share: one thread owning one llama_context."""

from __future__ import annotations

import queue
import threading
import time

from daemon.engine.errors import ModelUnavailable, QueueFull
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model

STOP = object()


class ContextWorker:
    """A thread that owns a context and a batch; work arrives through a bounded inbox."""

    def __init__(
        self, model: Model, options: ContextOptions, *, max_queue: int, name: str, thread: str
    ) -> None:
        self.model = model
        self.name = name
        self.ctx = Context(model, options)
        self.batch = Batch(options.n_batch, 1)
        self.n_slots = options.n_seq_max
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._outstanding = 0
        self._lock = threading.Lock()
        self._closing = False
        self.last_beat = time.monotonic()
        # When the llama_decode running now began (None between decodes): the watchdog
        # counts a long step as alive, and only one past its bound as hung.
        self.decode_started: float | None = None
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=thread, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _llama_decode(self, batch: Batch) -> int:
        """llama_decode, with the liveness marks the watchdog reads."""
        self.decode_started = time.monotonic()
        try:
            return self.ctx.decode(batch)
        finally:
            self.decode_started = None
            self.last_beat = time.monotonic()

    def healthy(self, now: float, stale_after: float, hung_after: float) -> bool:
        """Alive: the thread runs, and it either is inside a decode shorter than `hung_after`
        or finished its last step or idle wait within `stale_after` seconds."""
        if not self._thread.is_alive():
            return False
        started = self.decode_started
        if started is not None:
            return now - started < hung_after
        return now - self.last_beat < stale_after

    def _enqueue(self, item: object) -> None:
        """Count a request in and queue it; 503 when closing, 429 when slots and queue are full."""
        with self._lock:
            if self._closing:
                raise ModelUnavailable("the model is shutting down", retry_after=1)
            if self._outstanding >= self.n_slots + self.max_queue:
                raise QueueFull(
                    f"all {self.n_slots} slots of {self.name} are busy and the queue is full"
                )
            self._outstanding += 1
            # Under the lock, so nothing lands behind close()'s stop marker unanswered.
            self._inbox.put(item)

    def _done(self) -> None:
        """Count a request out."""
        with self._lock:
            self._outstanding -= 1

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet finished."""
        return self._outstanding

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop taking work and end the thread (what it had queued is answered 503), freeing
        nothing: for a model whose llama.cpp objects live on a lost RPC worker. False when
        the thread did not end within `timeout` (parked inside llama.cpp)."""
        with self._lock:
            self._closing = True
        self._inbox.put(STOP)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking work, wait for the running step, free llama.cpp resources.

        False when the thread did not stop within `timeout` (None: wait as long as the step
        takes): then nothing is freed, since a decode may still be using it.
        """
        if not self.stop(timeout):
            return False
        self.batch.close()
        self.ctx.close()
        return True
