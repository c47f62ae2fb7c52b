"""The `edged` command line: `edged serve`, `edged models`; the other verbs live in daemon/cli."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from daemon.cli import add_commands, duration
from daemon.config import Settings
from daemon.engine.types import CacheType

# flag dest -> Settings field, for flags that map one to one
_FLAGS: dict[str, tuple[str, type, str]] = {
    "host": ("--host", str, "address to bind (default 127.0.0.1)"),
    "port": ("--port", int, "port to listen on (default 8000)"),
    "model": ("--model", Path, "default model GGUF (default: the embedded SmolLM2)"),
    "models_dir": ("--models-dir", Path, "serve every *.gguf here under its file stem"),
    "import_dir": ("--import-dir", Path, "pulls may import (import:NAME) from here only"),
    "ctx_size": ("--ctx-size", int, "context tokens per sequence"),
    "parallel": ("--parallel", int, "sequence slots per model"),
    "threads": ("--threads", int, "CPU threads for generation"),
    "threads_batch": ("--threads-batch", int, "CPU threads for prompt processing"),
    "batch_size": ("--batch-size", int, "max tokens per decode step"),
    "ubatch_size": ("--ubatch-size", int, "physical micro-batch size"),
    "n_gpu_layers": (
        "--n-gpu-layers",
        lambda v: v if v == "auto" else int(v),  # type: ignore[dict-item]
        "layers on the GPU: auto (default) fits them to free memory, -1 = all, 0 = none",
    ),
    "main_gpu": ("--main-gpu", int, "GPU for the model when not split"),
    "max_queue": ("--max-queue", int, "requests that may wait for a slot before 429"),
    "store_max_bytes": ("--store-max-bytes", int, "memory bound of the request_id store"),
    "price_input_per_million": ("--price-input", float, "price per million prompt tokens"),
    "price_output_per_million": ("--price-output", float, "price per million output tokens"),
    "store_dir": ("--store-dir", Path, "spill and persist the request_id store here"),
    "store_key_max_bytes": ("--store-key-max-bytes", int, "request_id store bytes per API key"),
    "store_ttl": ("--store-ttl", float, "seconds an unused request_id entry is kept"),
    "max_concurrency_per_key": (
        "--max-concurrency-per-key",
        int,
        "requests of one API key running at once per model",
    ),
    "cache_ram": ("--cache-ram", int, "prompt cache bytes per model (0 = off; default 8 GiB)"),
    "cache_dir": ("--cache-dir", Path, "spill the prompt cache to this directory"),
    "cache_dir_max_bytes": ("--cache-dir-max-bytes", int, "prompt cache bytes on disk"),
    "cache_share_tokens": (
        "--cache-share-tokens",
        int,
        "leading cached prompt tokens one API key may reuse of another's (-1 = all, 0 = none)",
    ),
    # running as a service
    "api_key_file": ("--api-key-file", Path, "file of API keys, one per line"),
    "max_tokens_cap": ("--max-tokens-cap", int, "largest max_tokens a request may ask for"),
    "max_n": ("--max-n", int, "largest n (choices) per request"),
    "seed": ("--seed", int, "seed of a request that sets none (default -1: random each time)"),
    "max_batch": ("--max-batch", int, "most prompts in one batch request"),
    "max_beams": ("--max-beams", int, "largest num_beams"),
    "max_images": ("--max-images", int, "images and audio clips one request may carry"),
    "max_image_bytes": ("--max-image-bytes", int, "bytes of one image or audio file"),
    "max_image_pixels": ("--max-image-pixels", int, "width × height of one image"),
    "max_audio_seconds": (
        "--max-audio-seconds",
        duration,
        "seconds (or 5m) of audio one request may carry, all clips together (default 300)",
    ),
    "media_dir": ("--media-dir", Path, "images may be file:// URLs of files under this folder"),
    "remote_media_timeout": (
        "--remote-media-timeout",
        duration,
        "seconds one remote image may take to arrive (default 10)",
    ),
    "request_timeout": ("--request-timeout", duration, "seconds (or 5m) before a request is cut"),
    "drain_timeout": ("--drain-timeout", duration, "seconds SIGTERM waits for running streams"),
    "keep_alive": ("--keep-alive", duration, "idle time (300, 5m, 1h) before a model unloads"),
    "max_loaded_models": ("--max-loaded-models", int, "models kept in memory at once"),
    "max_models_memory": (
        "--max-models-memory",
        int,
        "bytes of system memory for all models (GPUs count per device)",
    ),
    "rpc": ("--rpc", str, "RPC workers host:port,... to split the model over (edged rpc-worker)"),
    "draft_model": ("--draft-model", Path, "draft GGUF for speculative decoding (same vocab)"),
    "draft_max": ("--draft-max", int, "most draft tokens verified per step (default 8)"),
}
# flag dest -> (flag, help) for switches that only turn a Settings boolean on
_SWITCHES: dict[str, tuple[str, str]] = {
    "insecure_no_auth": ("--insecure-no-auth", "allow a non-loopback bind without API keys"),
    "metrics_public": ("--metrics-public", "serve /metrics without an API key"),
    "log_json": ("--log-json", "write the access log as JSON lines"),
    "strict_model_names": ("--strict-model-names", "404 for unknown model names, even with one"),
    "verbose": (
        "--verbose",
        "answers carry `__verbose` (rendered prompt, tokens, settings), as llama-server's",
    ),
    "exact": (
        "--exact",
        "bit-exact reuse: output equals one uninterrupted plain decode (slower; default off)",
    ),
}


def _version() -> str:
    """The installed package's version, and llama-cpp-python's (what the engine runs)."""
    from daemon.version import bindings_version, edged_version

    return f"{edged_version()} (llama-cpp-python {bindings_version()})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Local LLM inference daemon")
    p.add_argument("--version", action="version", version=f"edged {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP daemon")
    models = sub.add_parser("models", help="list the servable models")
    for sp in (serve, models):
        for dest, (flag, typ, help_) in _FLAGS.items():
            sp.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
        sp.add_argument(
            "--alias",
            action="append",
            default=[],
            metavar="NAME=MODEL",
            help="serve MODEL (a file stem or a .gguf path) also as NAME; repeatable",
        )
        sp.add_argument(
            "--lora",
            action="append",
            default=[],
            metavar="[BASE+]NAME=PATH[:SCALE]",
            help="a LoRA adapter GGUF of BASE (default: the default model), off unless a "
            "request names it (`lora` field or model BASE+NAME); repeatable",
        )
        sp.add_argument(
            "--mmproj",
            action="append",
            default=[],
            metavar="[NAME=]PATH",
            help="a vision projector (mmproj GGUF) of NAME (default: the default model); "
            "mmproj-STEM.gguf beside STEM.gguf in the models folder pairs without it; "
            "repeatable",
        )
        sp.add_argument(
            "--chat-template-file",
            action="append",
            default=[],
            metavar="[NAME=]PATH",
            help="a Jinja chat template replacing the model's own, for NAME (default: the "
            "default model), as llama-server's --chat-template-file; repeatable",
        )
        sp.add_argument(
            "--chat-template",
            action="append",
            default=[],
            metavar="[MODEL=]NAME",
            help="one of llama.cpp's built-in chat formats (chatml, llama3, command-r, ...) "
            "for MODEL (default: the default model), as llama-server's --chat-template; "
            "repeatable",
        )
        sp.add_argument(
            "--tensor-split", type=str, default=None, help="comma-separated GPU proportions"
        )
        sp.add_argument(
            "--flash-attn",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="flash attention (default: on, except for generation under --exact)",
        )
        sp.add_argument(
            "--mmap",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="map model weights from their files (default: on); --no-mmap reads them into "
            "memory, so a model file copied over in place while in use cannot end the daemon",
        )
        sp.add_argument(
            "--speculate",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="speculative decoding by n-gram lookup (and --draft-model); default off; under "
            "--exact only where verified rows are bit-identical",
        )
        for which in ("k", "v"):
            sp.add_argument(
                f"--cache-type-{which}",
                dest=f"cache_type_{which}",
                choices=get_args(CacheType),
                default=None,
                help=f"KV cache type of {'keys' if which == 'k' else 'values'} (default f16)",
            )
        sp.add_argument(
            "--extra-buffers",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="llama.cpp AMX/repacked weight buffers (default: off on AMX CPUs)",
        )
        for dest, (flag, help_) in _SWITCHES.items():
            sp.add_argument(flag, dest=dest, action="store_true", default=None, help=help_)
        sp.add_argument(
            "--allow-remote-media",
            dest="allow_remote_media",
            action="append",
            default=None,
            metavar="HOST",
            help="fetch http(s) image URLs of HOST (host or host:port; * = any host); "
            "repeatable; default: none (a server that fetches URLs is an SSRF tool)",
        )
        sp.add_argument(
            "--cors-origin",
            dest="cors_origins",
            action="append",
            default=None,
            metavar="ORIGIN",
            help="allow browser requests from ORIGIN (CORS); repeatable; default: none",
        )
        sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    add_commands(sub)
    from daemon.rpc.worker import add_parser as add_rpc_worker

    add_rpc_worker(sub).add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning"]
    )
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from env/.env with the given flags on top."""
    overrides: dict[str, Any] = {
        dest: getattr(args, dest) for dest in _FLAGS if getattr(args, dest) is not None
    }
    overrides.update({d: True for d in _SWITCHES if getattr(args, d)})
    if args.cors_origins:
        overrides["cors_origins"] = args.cors_origins
    if args.allow_remote_media:
        overrides["allow_remote_media"] = args.allow_remote_media
    for dest in ("flash_attn", "extra_buffers", "speculate", "mmap"):  # --x / --no-x / unset
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    for dest in ("cache_type_k", "cache_type_v"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    if args.tensor_split:
        overrides["tensor_split"] = [float(x) for x in args.tensor_split.split(",")]
    if args.lora:
        overrides["lora"] = args.lora
    if args.mmproj:
        overrides["mmproj"] = args.mmproj
    if args.chat_template_file:
        overrides["chat_template_file"] = args.chat_template_file
    if args.chat_template:
        overrides["chat_template"] = args.chat_template
    base = Settings(**overrides)
    if args.alias:
        aliases = dict(base.aliases)
        for spec in args.alias:
            name, sep, target = spec.partition("=")
            if not sep or not name or not target:
                raise SystemExit(f"edged: --alias wants NAME=MODEL, got {spec!r}")
            aliases[name] = target
        base = base.model_copy(update={"aliases": aliases})
    return base


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edged` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "func", None) is not None:  # the person-facing verbs of daemon/cli
        return int(args.func(args))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "rpc-worker":
        from daemon.rpc.worker import run

        return run(args)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"edged: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "models":
        from daemon.app import build_registry

        for e in build_registry(settings).entries():
            print(e.name if e.alias_of is None else f"{e.name} -> {e.alias_of}", e.path, sep="\t")
        return 0
    if settings.rpc:
        from daemon.engine.native.ggml_rpc import RPC_MISSING, rpc_available

        if not rpc_available():
            print(f"edged: --rpc: {RPC_MISSING}", file=sys.stderr)
            return 2
    from daemon.service.runner import serve

    return serve(settings, args.log_level, reload=lambda: settings_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
