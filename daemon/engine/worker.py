"""What the generation scheduler and the embedder share: one thread owning one llama_context."""

from __future__ import annotations

import queue
import threading
import time

from daemon.engine.llama import Batch, Context, ContextOptions, Model
from daemon.errors import Overloaded, Unavailable

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
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=thread, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _enqueue(self, item: object) -> None:
        """Count a request in and queue it; 503 when closing, 429 when slots and queue are full."""
        with self._lock:
            if self._closing:
                raise Unavailable("the model is shutting down")
            if self._outstanding >= self.n_slots + self.max_queue:
                raise Overloaded(
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

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, stop the thread, and free llama.cpp resources."""
        with self._lock:
            self._closing = True
        self._inbox.put(STOP)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.batch.close()
            self.ctx.close()
