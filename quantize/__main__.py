"""edged-quantize: fetch, convert, quantize, pull and inspect GGUF models."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from quantize.errors import QuantizeError
from quantize.outtypes import OUTTYPES
from quantize.quantize import QUANT_TYPES

EXIT_ERROR = 2


def _cmd_fetch(args: argparse.Namespace) -> None:
    from quantize.fetch import fetch

    print(fetch(args.repo_id, args.revision, args.include or None))


def _cmd_convert(args: argparse.Namespace) -> None:
    if args.mmproj:
        from quantize.mmproj import convert_mmproj

        print(convert_mmproj(args.src, args.output, args.outtype, progress=not args.quiet))
        return
    from quantize.convert import convert

    print(convert(args.src, args.output, args.outtype, progress=not args.quiet))


def _cmd_convert_lora(args: argparse.Namespace) -> None:
    from quantize.lora import convert_lora

    print(convert_lora(args.src, args.output, args.base, args.outtype, progress=not args.quiet))


def _cmd_quantize(args: argparse.Namespace) -> None:
    from quantize.quantize import quantize_gguf

    print(
        quantize_gguf(
            args.src,
            args.output,
            args.type,
            args.threads,
            progress=not args.quiet,
            allow_requantize=args.allow_requantize,
        )
    )


def _cmd_pull(args: argparse.Namespace) -> None:
    from quantize.fetch import is_local
    from quantize.pull import pull

    # The local user's own command: a REPO_ID naming a directory of theirs is used in place.
    local = Path(args.repo_id).expanduser() if is_local(args.repo_id) else None
    print(
        pull(
            args.repo_id,
            args.type,
            args.models_dir,
            args.revision,
            args.threads,
            progress=not args.quiet,
            local_dir=local,
        )
    )


def _cmd_inspect(args: argparse.Namespace) -> None:
    from quantize.info import inspect_gguf

    print("\n".join(inspect_gguf(args.file).lines()))


def _cmd_export(args: argparse.Namespace) -> None:
    from quantize.export import export_hf

    print(export_hf(args.src, args.output))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per verb."""
    p = argparse.ArgumentParser(prog="edged-quantize", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log what is being done")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fetch", help="download a Hugging Face repository, print its local path")
    f.add_argument("repo_id", help="owner/name on the hub, or a local directory")
    f.add_argument("--revision", help="branch, tag or commit (default: main)")
    f.add_argument(
        "--include", nargs="+", metavar="GLOB", help="only these files (default: checkpoint files)"
    )
    f.set_defaults(func=_cmd_fetch)

    c = sub.add_parser("convert", help="convert a checkpoint directory (safetensors) to GGUF")
    c.add_argument("src", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    c.add_argument("--outtype", choices=sorted(OUTTYPES), default="f16")
    c.add_argument(
        "--mmproj",
        action="store_true",
        help="write the vision projector of a vision-language checkpoint (SmolVLM/Idefics3) "
        "instead of its language model, as llama.cpp's convert_hf_to_gguf.py --mmproj does",
    )
    c.set_defaults(func=_cmd_convert)

    cl = sub.add_parser(
        "convert-lora", help="convert a PEFT LoRA adapter directory to a GGUF adapter"
    )
    cl.add_argument("src", type=Path, help="adapter_config.json + adapter safetensors")
    cl.add_argument("-o", "--output", type=Path, required=True)
    cl.add_argument(
        "--base",
        type=Path,
        default=None,
        help="the base model's checkpoint directory (default: base_model_name_or_path)",
    )
    cl.add_argument("--outtype", choices=["f32", "f16"], default="f16")
    cl.set_defaults(func=_cmd_convert_lora)

    q = sub.add_parser("quantize", help="quantize a GGUF with llama.cpp")
    q.add_argument("src", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--type", required=True, metavar="TYPE", help=f"one of {', '.join(QUANT_TYPES)}")
    q.add_argument("--threads", type=int, default=None, help="default: all cores")
    q.add_argument(
        "--allow-requantize", action="store_true", help="accept an already quantized input"
    )
    q.set_defaults(func=_cmd_quantize)

    pl = sub.add_parser(
        "pull", help="fetch (and convert and quantize) a model into the models directory"
    )
    pl.add_argument("repo_id")
    pl.add_argument(
        "--type", required=True, metavar="TYPE", help=f"one of {', '.join(QUANT_TYPES)}"
    )
    pl.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="default: $EDGED_MODELS_DIR or ~/.local/share/edged/models",
    )
    pl.add_argument("--revision")
    pl.add_argument("--threads", type=int, default=None)
    pl.set_defaults(func=_cmd_pull)

    i = sub.add_parser("inspect", help="summarize a GGUF file")
    i.add_argument("file", type=Path)
    i.set_defaults(func=_cmd_inspect)

    e = sub.add_parser(
        "export", help="write a llama GGUF back as a Hugging Face directory (f32 safetensors)"
    )
    e.add_argument("src", type=Path)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; QuantizeError becomes one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    if not args.verbose:
        logging.getLogger("gguf").setLevel(logging.ERROR)  # SpecialVocab chatter about unmapped ids
    try:
        args.func(args)
    except QuantizeError as e:
        print(f"edged-quantize {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edged-quantize: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
