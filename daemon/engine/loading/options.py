"""How a model is loaded and decodes: the engine's options per model (from the daemon's
settings), the contract a loaded model reports, and how its projector runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.engine.loading.fit import DeviceSource
from daemon.engine.native.llama import ModelOptions
from daemon.engine.native.mtmd import ProjectorOptions
from daemon.engine.types import CacheType


@dataclass(frozen=True)
class EngineOptions:
    """Per-model engine settings derived from the daemon's Settings."""

    ctx_size: int = 4096
    parallel: int = 8
    threads: int = 2
    threads_batch: int | None = None
    batch_size: int = 512
    ubatch_size: int = 512
    # Bit-exact reuse (--exact): prefix reuse and the prompt cache keep only KV computed in
    # multi-token chunks, and speculation runs only where verified rows are bit-identical.
    # Off: every cached token is reused and speculation accepts rounding drift.
    exact: bool = True
    # None: off for generation contexts, on for encoder (embedding, rerank) contexts.
    flash_attn: bool | None = None
    cache_type_k: CacheType = "f16"
    cache_type_v: CacheType = "f16"
    max_queue: int = 64
    model: ModelOptions = field(default_factory=ModelOptions)
    store_max_bytes: int = 512 << 20
    store_dir: Path | None = None
    # Per API key share of the store (None: the whole bound), and idle expiry in seconds.
    store_key_max_bytes: int | None = None
    store_ttl: float | None = None
    # Requests of one API key running at once on one model (None: no cap).
    max_per_key: int | None = None
    # Speculative decoding: n-gram lookup, and a draft GGUF for same-vocabulary models.
    speculate: bool = False
    # Draft on every step a draft exists, ignoring the cost model (tests, benchmarks).
    speculate_always: bool = False
    draft_model: Path | None = None
    draft_max: int = 8
    # The prompt cache below the slots: memory bound (0 = off), spill directory and its
    # bound, and the leading tokens one key may reuse of another's (0 none, -1 all).
    cache_ram: int = 8 << 30
    cache_dir: Path | None = None
    cache_dir_max_bytes: int = 16 << 30
    cache_share_tokens: int = 0
    # With n_gpu_layers auto: whether ctx_size and parallel may shrink so a model fits a GPU,
    # and where free device memory is read (None: ggml's local devices; tests pass tables).
    fit_kv: bool = False
    devices: DeviceSource | None = None


def projector_options(options: EngineOptions) -> ProjectorOptions:
    """How a model's projector runs: on the model's device; one thread fewer than decoding,
    since encoding runs beside the scheduler thread (two ggml pools spinning on two shared
    cores crawl); its attention in F32 under --exact."""
    return ProjectorOptions(
        use_gpu=options.model.n_gpu_layers != 0,
        n_threads=max(1, options.threads - 1),
        flash_attn=False if options.exact else None,
    )


@dataclass(frozen=True)
class DecodeMode:
    """How a loaded model decodes: bit-exact reuse or the fast default (reported by /props
    and /admin/ps so a client knows which contract it gets)."""

    exact: bool
    flash_attn: bool
    # "ngram", "draft", "ngram+draft", or "off: <why>".
    speculation: str
    # What the model's memory keeps of a sequence and so what reuse can resume (see
    # caches/memory.py): "kv cache", "sliding window 512 (full cache)", "recurrent state ...".
    memory: str = "kv cache"

    def as_dict(self) -> dict[str, Any]:
        """The mode as JSON fields."""
        return {
            "exact": self.exact,
            "flash_attn": self.flash_attn,
            "speculation": self.speculation,
            "memory": self.memory,
        }
