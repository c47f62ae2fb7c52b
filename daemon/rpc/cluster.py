"""The daemon's side of `--rpc`: the workers' state, their devices, and surviving their loss.

ggml's RPC client has no error path: when a worker dies, the thread talking to it calls
ggml_abort(), which would end the daemon. The abort hook (ggml_rpc.set_abort_hook) parks
that thread instead and calls `RpcCluster.on_abort`; the event loop then gives up every
model that used the workers (its requests end with one clean error; its llama.cpp objects
are leaked, since freeing them would talk to the lost worker again), closes the daemon's
connections to the workers that are still up, and reconnects under a fresh endpoint
spelling (ggml caches connections per endpoint string; `host:050052` is port 50052 too).
The next request, or the watcher once every worker answers again, loads the model anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from daemon.engine.errors import ModelUnavailable

if TYPE_CHECKING:
    from daemon.engine.loading.registry import ModelRegistry
    from daemon.engine.native.ggml_rpc import Device

log = logging.getLogger("edged.rpc")

# ggml_abort messages that come from the RPC client (a lost or misbehaving worker).
_RPC_ABORTS = ("RPC", "Failed to connect", "handshake")


def parse_endpoints(spec: str) -> list[tuple[str, int]]:
    """`h1:p1,h2:p2` (IPv6 as `[addr]:port`) to (host, port) pairs; ValueError when malformed."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"an RPC worker is host:port, got {item!r}")
        out.append((host, int(port)))
    return out


@dataclass
class Worker:
    """One configured RPC worker as the daemon last saw it."""

    host: str
    port: int
    up: bool | None = None  # None until first probed
    error: str | None = None
    devices: list[Device] = field(default_factory=list)
    changed_at: float = field(default_factory=time.time)
    losses: int = 0

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def mark(self, up: bool, error: str | None = None) -> None:
        if up != self.up:
            self.changed_at = time.time()
            log.log(
                logging.INFO if up else logging.WARNING,
                "RPC worker %s is %s%s",
                self.endpoint,
                "up" if up else "down",
                f": {error}" if error else "",
            )
        self.up, self.error = up, error

    def snapshot(self) -> dict[str, Any]:
        """The worker as /health shows it."""
        return {
            "endpoint": self.endpoint,
            "status": {True: "up", False: "down", None: "unknown"}[self.up],
            "error": self.error,
            "devices": [
                {"name": d.name, "memory_total": d.total, "memory_free": d.free}
                for d in self.devices
            ],
            "memory_total": sum(d.total for d in self.devices),
            "memory_free": sum(d.free for d in self.devices),
            "since": self.changed_at,
            "losses": self.losses,
        }


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(info[4][0]), port) for info in infos}


def _own_sockets(peers: set[tuple[str, int]]) -> list[int]:
    """File descriptors of this process's TCP connections to any of `peers` (Linux /proc)."""
    fds = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    continue
                s = socket.socket(fileno=int(name))
            except (OSError, ValueError):
                continue
            try:
                peer = s.getpeername()
                if isinstance(peer, tuple) and (str(peer[0]), peer[1]) in peers:
                    fds.append(int(name))
            except OSError:
                pass
            finally:
                s.detach()  # the descriptor belongs to ggml; never close it here
    return fds


def _fd_alive(fd: int) -> bool:
    """Whether a connection's peer is still there: a peek sees EOF or a reset once it died."""
    s = socket.socket(fileno=fd)
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read: the connection is idle and open
    except OSError:
        return False
    finally:
        s.detach()


def _shutdown(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.detach()


class RpcCluster:
    """The configured workers, their devices, and recovery from losing one."""

    def __init__(self, spec: str, registry: ModelRegistry, *, probe_timeout: float = 1.0) -> None:
        self.workers = [Worker(h, p) for h, p in parse_endpoints(spec)]
        self.registry = registry
        self.probe_timeout = probe_timeout
        self.generation = 0  # bumped after a loss: reconnect under a new endpoint spelling
        self._registered = -1
        self._local: tuple[int, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recovering = False
        # A loss took the default model, or a load found a worker down: the watcher loads
        # the default model once every worker answers.
        self._reload = False
        self._quarantined: set[int] = set()  # fds shut down after a loss (ggml still owns them)
        # Seconds a lost model's scheduler gets to stop on its own thread before it counts
        # as parked inside llama.cpp for good (`Scheduler.retire`).
        self.retire_timeout = 3.0

    # ---- set-up --------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Install the abort hook; call once from the event loop before models load."""
        from daemon.engine.native.ggml_rpc import local_offload_devices, set_abort_hook

        self._loop = loop
        self._local = tuple(d.ptr for d in local_offload_devices())
        set_abort_hook(self.on_abort)

    def _spelling(self, w: Worker) -> str:
        # std::stoi reads "050052" as 50052: a new string, hence a new ggml connection.
        return f"{w.host}:{'0' * self.generation}{w.port}"

    async def before_load(self) -> None:
        """Registry hook: every worker must answer, and its devices be registered, before a
        model loads (ggml aborts on a worker it cannot reach)."""
        await self._refresh()
        down = [w for w in self.workers if not w.up]
        if down:
            self._reload = True  # the watcher loads the default model once they answer
            raise ModelUnavailable(
                "RPC worker " + ", ".join(f"{w.endpoint} is down ({w.error})" for w in down),
                retry_after=5,
            )
        if self._registered != self.generation:
            gen = self.generation
            for w in self.workers:
                w.devices = await asyncio.to_thread(_add_server, self._spelling(w))
            devices = tuple(d.ptr for w in self.workers for d in w.devices) + self._local
            opts = self.registry.options
            self.registry.options = replace(opts, model=replace(opts.model, devices=devices))
            self._registered = gen
            log.info(
                "RPC devices: %s",
                ", ".join(f"{d.name} ({d.description})" for w in self.workers for d in w.devices),
            )

    # ---- state ---------------------------------------------------------------------

    def _connected(self) -> bool:
        """Whether a loaded model holds connections to the workers (then do not dial them:
        a worker serves one client at a time and its accept backlog is one)."""
        return bool(self.registry.loaded()) and self._registered == self.generation

    async def probe(self) -> None:
        """Refresh each worker's up/down state (not while a model loads: it holds them)."""
        if not self.registry.loading:
            await self._refresh()

    async def _refresh(self) -> None:
        if self._connected():
            dead = await asyncio.to_thread(self._dead_connections)
            if not dead:
                for w in self.workers:
                    w.mark(True)
                return
            await self.recover(f"lost the connection to {', '.join(dead)}")
            return
        await self._dial_all()

    async def _dial_all(self) -> list[str | None]:
        results = await asyncio.gather(*(asyncio.to_thread(self._dial, w) for w in self.workers))
        for w, err in zip(self.workers, results, strict=True):
            w.mark(err is None, err)
        return results

    def _dial(self, w: Worker) -> str | None:
        try:
            with socket.create_connection((w.host, w.port), timeout=self.probe_timeout):
                return None
        except OSError as exc:
            return exc.strerror or str(exc)

    def _dead_connections(self) -> list[str]:
        dead = []
        for w in self.workers:
            fds = [
                fd for fd in _own_sockets(_addresses(w.host, w.port)) if fd not in self._quarantined
            ]
            if not fds or not all(_fd_alive(fd) for fd in fds):
                dead.append(w.endpoint)
        return dead

    def healthy(self) -> bool:
        """Every worker answered its last probe."""
        return all(w.up for w in self.workers)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each worker for /health."""
        return [w.snapshot() for w in self.workers]

    # ---- losing a worker -------------------------------------------------------------

    def on_abort(self, message: str) -> bool:
        """ggml is about to abort (any thread). Park that thread when it is the RPC client's
        doing, and recover on the event loop; anything else aborts as before."""
        if not any(k in message for k in _RPC_ABORTS) or self._loop is None:
            return False
        # "/path/ggml-rpc.cpp:566: Remote RPC server crashed ..." -> the words only
        reason = message.rsplit(": ", 1)[-1].strip()
        log.error("ggml RPC client failed: %s; giving up the models that use the workers", reason)
        with contextlib.suppress(RuntimeError):  # loop closed: we are shutting down anyway
            self._loop.call_soon_threadsafe(self._spawn_recover, reason)
        return True

    def _spawn_recover(self, reason: str) -> None:
        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("recovering from a lost RPC worker failed", exc_info=task.exception())

        asyncio.ensure_future(self.recover(reason)).add_done_callback(done)

    async def recover(self, reason: str) -> None:
        """Give up every loaded model (their requests end with a 503), drop the daemon's
        connections to the workers, and probe them; the next load reconnects afresh."""
        if self._recovering or self._registered != self.generation:
            return  # already done for this generation (another thread's abort, a stale one)
        self._recovering = True
        try:
            error = ModelUnavailable(
                f"an RPC worker was lost ({reason}); the request was ended", retry_after=5
            )
            gone = []
            for lm in self.registry.loaded():
                self._reload = True
                self.registry.forget(lm.name)
                gone.append(lm)
            # Each scheduler stops on its own thread (its queues are touched there only),
            # ending its requests with `error`; nothing on the lost worker is freed. A thread
            # parked inside llama.cpp for good is given up after a bound (`retire`).
            stopped = await asyncio.gather(
                *(asyncio.to_thread(lm.abandon, error, self.retire_timeout) for lm in gone)
            )
            for lm, ok in zip(gone, stopped, strict=True):
                if not ok:
                    log.warning("%s: its scheduler is stuck on the lost worker", lm.name)
            self.generation += 1
            peers = set().union(*(_addresses(w.host, w.port) for w in self.workers))
            fds = await asyncio.to_thread(_own_sockets, peers)
            for fd in fds:
                _shutdown(fd)
            self._quarantined.update(fds)
            for w, err in zip(self.workers, await self._dial_all(), strict=True):
                w.losses += err is not None
        finally:
            self._recovering = False

    async def watch(self, interval: float = 1.0) -> None:
        """Probe forever; reload the default model once every worker is back."""
        while True:
            try:
                await self.probe()
                if self._reload and self.healthy():
                    await self.registry.get(None)
                    self._reload = False
            except ModelUnavailable:
                pass
            except Exception:  # keep watching; one failed probe or load must not stop it
                log.exception("watching the RPC workers failed")
            await asyncio.sleep(interval)


def _add_server(endpoint: str) -> list[Device]:
    from daemon.engine.native.ggml_rpc import rpc_add_server

    return rpc_add_server(endpoint)
