"""`edged pull REPO[:QUANT]`: a model from the hub (or a directory of the user's) into the
models directory, through the daemon's own model service (daemon/models): the same names, the
same refusal to overwrite a model from another repository (`--replace` does), the same files.

The work is edged-quantize's `pull` (quantize/pull.py): a GGUF repository gives the file of
that quantization; a safetensors one is fetched, converted and quantized. Downloads go through
huggingface_hub (progress bars, resume, HF_TOKEN, HF_ENDPOINT).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import httpx

from daemon.cli.client import NoDaemon, add_daemon_flags, client, request


def cmd_pull(args: argparse.Namespace) -> int:
    from daemon import models
    from daemon.cli.local import models_dir
    from daemon.errors import EdgedError

    try:
        source = models.parse_local_user(args.model, args.default_quant, args.revision)
        plan = models.plan_pull(source, models_dir(args), replace=args.replace)
        path = models.run_pull(plan, threads=args.threads, progress=True)
    except EdgedError as exc:
        print(f"edged pull: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nedged pull: interrupted; run it again to resume", file=sys.stderr)
        return 130
    print(f"pulled {plan.model} -> {path}")
    # A running daemon serves it at once. Best effort: none may run, or it may want a key.
    with contextlib.suppress(NoDaemon, httpx.HTTPError), client(args, timeout=10) as http:
        request(http, "POST", "/admin/rescan")
    return 0


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pull",
        help="download a model (GGUF, or safetensors converted and quantized)",
        description="REPO[:QUANT], e.g. bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M, or a "
        "directory or .gguf file of yours, DIR[:QUANT]",
    )
    p.add_argument("model", metavar="REPO[:QUANT]")
    p.add_argument("--default-quant", default="Q4_K_M", help="QUANT when none is given")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a model of the same name that came from another repository",
    )
    p.add_argument("--threads", type=int, default=None, help="quantization threads")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="default: $EDGED_MODELS_DIR or ~/.local/share/edged/models",
    )
    add_daemon_flags(p)
    p.set_defaults(func=cmd_pull)
