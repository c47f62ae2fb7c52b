"""Making room for a model: the caps on loaded models and system memory, device memory given
to the model in use, prompt caches that give way first, and unloading (least recently used
idle models first; the default model and leased models are never evicted)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

from daemon.engine.errors import ModelUnavailable, NeverFits
from daemon.engine.loading.fit import local_devices
from daemon.engine.loading.loaded import LoadedModel, gpu_plan
from daemon.engine.loading.options import EngineOptions

log = logging.getLogger("edged.registry")


class Eviction:
    """The registry's loaded models as a bounded set: what to unload so a model fits.

    ModelRegistry inherits it and owns the state it reads."""

    options: EngineOptions
    default_name: str
    max_loaded: int | None
    max_memory: int | None
    unloads: int
    _loaded: dict[str, LoadedModel]
    _stale: dict[LoadedModel, int]
    _leases: Counter[str]
    _last_used: dict[str, float]

    def _idle(self, name: str) -> bool:
        lm = self._loaded[name]
        return name != self.default_name and lm.worker.outstanding == 0 and not self._leases[name]

    @staticmethod
    def _file_size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def memory_bytes(self) -> int:
        """Estimated memory of every loaded model (weights, allocated KV, prompt caches),
        replaced ones still finishing their requests included."""
        return sum(lm.memory_bytes for lm in [*self._loaded.values(), *self._stale])

    def _host_bytes(self) -> int:
        """Weights and KV in system memory, the loaded models together: the memory cap
        counts these (and the prompt caches, kept in system memory); device memory is
        counted per device by the GPU fit, which never plans past a device's free memory."""
        return sum(lm.host_bytes for lm in [*self._loaded.values(), *self._stale])

    def _over(self, incoming: int) -> bool:
        if self.max_loaded is not None and len(self._loaded) >= self.max_loaded:
            return True
        # Prompt caches give way (`_share_caches`): only weights and KV decide evictions.
        return self.max_memory is not None and self._host_bytes() + incoming > self.max_memory

    async def _share_caches(self, incoming: int = 0, newcomers: int = 0) -> None:
        """Under a memory cap, bound every loaded model's prompt cache to an equal share of
        what weights and KV (and a model about to load) leave of it. Caches are what gives
        way first: entries are cheaper to lose than a loaded model."""
        if self.max_memory is None:
            return
        n = len(self._loaded) + newcomers
        if n == 0:
            return
        share = max(self.max_memory - self._host_bytes() - incoming, 0) // n
        # Off the event loop: evicted entries may be written to the spill directory.
        for lm in list(self._loaded.values()):
            await asyncio.to_thread(lm.limit_cache, share)

    async def _make_room(self, incoming: int, mine: frozenset[str] = frozenset()) -> None:
        """Unload least recently used idle models until a model of `incoming` bytes fits."""
        while self._loaded and self._over(incoming):
            idle = [n for n in self._loaded if self._idle(n)]
            if not idle:
                self._refuse_if_never(incoming, mine)
                raise ModelUnavailable(
                    f"{len(self._loaded)} models are loaded and busy (caps: "
                    f"{self.max_loaded} models, {self.max_memory} bytes); retry shortly",
                    retry_after=5,
                )
            await self.unload(min(idle, key=lambda n: self._last_used.get(n, 0.0)))

    async def _incoming_host_bytes(self, path: Path) -> int:
        """What a model about to load will take of system memory, before it loads: its file,
        less what the GPU fit would put on devices (the loaded model's own figure replaces
        this estimate once it is in)."""
        size = self._file_size(path)
        o = self.options
        if o.model.n_gpu_layers is not None:  # set by hand: no estimate of where it goes
            return size
        found = (o.devices or local_devices)()
        if not found:
            return size
        plan = await asyncio.to_thread(gpu_plan, path, o, found)
        return max(size - plan.gpu_bytes, 0)

    async def _make_gpu_room(self, path: Path, mine: frozenset[str]) -> None:
        """With GPU layers fitted (`auto`), unload least recently used idle models that hold
        device memory while the incoming model would not go to the GPU whole: device memory
        is given to the model in use, as system memory is (Ollama does the same)."""
        o = self.options
        if o.model.n_gpu_layers is not None:
            return
        devices = o.devices or local_devices
        while True:
            found = devices()
            if not found:
                return
            plan = await asyncio.to_thread(gpu_plan, path, o, found)
            if plan.layers < 0:
                return
            holders = [
                n
                for n, lm in self._loaded.items()
                if lm.offload.gpu_bytes > 0 and n not in mine and self._idle(n)
            ]
            if not holders:
                return  # what fits goes; the rest of the layers stay on the CPU
            name = min(holders, key=lambda n: self._last_used.get(n, 0.0))
            log.info("unloading %s: its device memory lets the next model fit whole", name)
            await self.unload(name)

    def _refuse_if_never(self, incoming: int, mine: frozenset[str]) -> None:
        """No retry helps when every model in the way is the default (it stays loaded) or
        one the same request holds, and those with the newcomer exceed a cap: say which."""
        stuck = [n for n in self._loaded if n == self.default_name or n in mine]
        if len(stuck) != len(self._loaded):
            return  # other requests' models leave once they end: retrying helps
        names = ", ".join(f"`{n}`" for n in stuck)
        if self.max_loaded is not None and len(stuck) + 1 > self.max_loaded:
            raise NeverFits(
                f"this request needs {len(stuck) + 1} models loaded at once ({names} and one "
                f"more; the default model stays loaded), but --max-loaded-models is "
                f"{self.max_loaded}: raise it",
                subject="model",
            )
        held = sum(self._loaded[n].host_bytes for n in stuck)
        if self.max_memory is not None and held + incoming > self.max_memory:
            raise NeverFits(
                f"this request needs about {(held + incoming) >> 20} MiB of models at once "
                f"({names} and one more), over --max-models-memory "
                f"({self.max_memory >> 20} MiB): raise it",
                subject="model",
            )

    async def _fit_memory(self, key: str) -> None:
        """After a load, evict idle others while over the memory cap; refuse a model too big."""
        if self.max_memory is None:
            return
        while self._host_bytes() > self.max_memory:
            idle = [n for n in self._loaded if n != key and self._idle(n)]
            if not idle:
                need = self._loaded[key].host_bytes
                await self.unload(key)
                raise ModelUnavailable(
                    f"`{key}` needs about {need >> 20} MiB; with the models in use that exceeds "
                    f"the {self.max_memory >> 20} MiB cap",
                    retry_after=5,
                )
            await self.unload(min(idle, key=lambda n: self._last_used.get(n, 0.0)))

    async def unload(self, name: str) -> None:
        """Take `name` out of service and free it (requests still on it end as 503)."""
        lm = self._loaded.pop(name, None)
        if lm is None:
            return
        log.info("unloading %s", name)
        self.unloads += 1
        await asyncio.to_thread(lm.close)
        await self._share_caches()  # the others' caches may grow into what it held
