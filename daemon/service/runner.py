"""`edged serve`: uvicorn with systemd notify, a watchdog, SIGTERM drain and SIGHUP reload."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from pydantic import ValidationError

from daemon.api.auth import ApiKeys, KeyFileError, is_loopback, load_api_keys
from daemon.app import api_keys, build_registry, create_app
from daemon.config import Settings
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import Unavailable
from daemon.service.sdnotify import notify, watchdog_interval
from daemon.service.state import ServiceState

log = logging.getLogger("edged.service")


def schedulers_healthy(
    registry: ModelRegistry, now: float, stale_after: float, hung_after: float | None = None
) -> bool:
    """Every loaded model's worker thread runs, and either stepped within `stale_after` s or
    is inside one llama_decode that began less than `hung_after` s ago (a long prefill is
    work, not a hang; a decode past that bound is hung)."""
    hung = max(stale_after, hung_after if hung_after is not None else stale_after)
    return all(lm.worker.healthy(now, stale_after, hung) for lm in registry.loaded())


def outstanding(registry: ModelRegistry, state: ServiceState) -> int:
    """Requests not finished yet: HTTP requests in flight and generations in the engines."""
    return state.inflight + sum(lm.worker.outstanding for lm in registry.loaded())


class EdgedServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM drains first and SIGHUP rescans the models."""

    def __init__(
        self,
        config: uvicorn.Config,
        settings: Settings,
        registry: ModelRegistry,
        state: ServiceState,
        reload: Callable[[], Settings],
        keys: ApiKeys | None = None,
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.registry = registry
        self.state = state
        self.keys = keys
        self.reload_settings = reload
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        """Run uvicorn plus the systemd supervisor, with SIGHUP wired to a rescan."""
        self._loop = asyncio.get_running_loop()
        supervisor = asyncio.create_task(self._supervise())
        previous = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            await super().serve(sockets)
        finally:
            signal.signal(signal.SIGHUP, previous)
            supervisor.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: SIGHUP reloads; the first SIGTERM/SIGINT drains, a second one exits."""
        # uvicorn re-raises captured signals after serving, which would turn a clean drain
        # into death by SIGTERM; so this never records them in `_captured_signals`.
        if self._loop is None:
            self.should_exit = True
            return
        if sig == signal.SIGHUP:
            self._loop.call_soon_threadsafe(self._spawn, self._reload())
        elif self.state.draining:
            self.should_exit = True
            self.force_exit = sig == signal.SIGINT
        else:
            self.state.draining = True
            self._loop.call_soon_threadsafe(self._spawn, self._drain())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Refuse new requests (503), let running ones finish within the drain timeout, exit."""
        limit = self.settings.drain_timeout
        left = self.state.inflight
        notify("STOPPING=1", f"STATUS=draining {left} request(s), at most {limit:g} s")
        log.info("shutting down: draining %d request(s), at most %g s", left, limit)
        deadline = time.monotonic() + limit
        while outstanding(self.registry, self.state) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if outstanding(self.registry, self.state):
            log.warning("drain timeout: %d request(s) still running are cut", self.state.inflight)
            # Streams end with one error event instead of a connection torn down mid-chunk.
            for record in list(self.state.records):
                record.cut(Unavailable("the server shut down before this request finished"))
            await asyncio.sleep(0.5)
        self.should_exit = True

    async def _reload(self) -> None:
        """SIGHUP: re-read settings (.env, environment) for aliases and API keys, and rescan
        the models dir. A revoked key is refused from the next request on."""
        try:
            fresh = self.reload_settings()
        except (ValidationError, SystemExit) as exc:
            log.error("reload refused, keeping the current models: %s", exc)
            return
        if self.keys is not None:
            try:
                entries = load_api_keys(fresh)
            except (OSError, KeyFileError) as exc:
                log.error("API keys not reloaded, keeping the current ones: %s", exc)
            else:
                if entries or not self.keys.enabled:
                    self.keys.replace(entries)
                    log.info("reloaded %d API key(s)", len(entries))
                else:  # emptying the key file must not open a keyed daemon to everyone
                    log.error("API keys not reloaded: the new set is empty (restart to drop auth)")
        self.registry.rescan(aliases=fresh.aliases)
        names = [e.name for e in self.registry.entries()]
        log.info("reloaded: %d servable model name(s)", len(names))
        notify(f"STATUS=serving; reloaded {len(names)} model name(s)")

    async def _supervise(self) -> None:
        """READY=1 once the default model is up; WATCHDOG=1 while every scheduler steps."""
        interval = watchdog_interval()
        stale_after = max(2 * interval, 5.0) if interval else 0.0
        tick = min(0.25, interval / 2) if interval else 0.25
        ready = False
        last_ping = 0.0
        notify(f"STATUS=loading {self.registry.default_name}")
        while True:
            now = time.monotonic()
            if not ready and self.started and self.registry.is_loaded(self.registry.default_name):
                ready = True
                notify("READY=1", f"STATUS=serving {self.registry.default_name}")
                log.info("ready on http://%s:%d", self.settings.host, self.settings.port)
            if interval and now - last_ping >= interval:
                # A hung or dead scheduler stops the pings: systemd then restarts the service.
                # One decode may run as long as a request may; longer than that is a hang.
                hung_after = self.settings.request_timeout
                if schedulers_healthy(self.registry, now, stale_after, hung_after):
                    notify("WATCHDOG=1")
                    last_ping = now
                else:
                    log.error("a scheduler is stuck or dead: withholding the watchdog ping")
            await asyncio.sleep(tick)


def _configure_access_log(json_lines: bool) -> None:
    """JSON access lines go out bare, one object per line, so log shippers can parse them."""
    if not json_lines:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("edged.access")
    access.addHandler(handler)
    access.propagate = False


def serve(settings: Settings, log_level: str, *, reload: Callable[[], Settings]) -> int:
    """Run the daemon until SIGTERM/SIGINT; the process exit status."""
    try:
        keys = api_keys(settings)
    except OSError as exc:
        print(f"edged: cannot read --api-key-file: {exc}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"edged: --api-key-file: {exc}", file=sys.stderr)
        return 2
    if not keys.enabled and not is_loopback(settings.host) and not settings.insecure_no_auth:
        print(
            f"edged: refusing to listen on {settings.host} without API keys: anyone who can "
            "reach this address could use the models. Set EDGED_API_KEYS or --api-key-file, "
            "bind 127.0.0.1, or pass --insecure-no-auth.",
            file=sys.stderr,
        )
        return 2
    _configure_access_log(settings.log_json)
    state = ServiceState()
    registry = build_registry(settings)
    app = create_app(settings, registry, state, keys)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        # The drain already waited for streams; this bounds what is left after its timeout.
        timeout_graceful_shutdown=5,
    )
    server = EdgedServer(config, settings, registry, state, reload, keys)
    server.run()
    if server.started:
        return 0
    notify("STATUS=failed to start")
    return 1
