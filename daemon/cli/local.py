"""`edged list`, `edged show MODEL`, `edged rm MODEL`: the models on this machine."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.config import embedded_model_path
from daemon.models.files import model_files, remove, served_name


@dataclass(frozen=True)
class LocalModel:
    """A model file on disk under the name the daemon serves it as."""

    name: str
    path: Path
    embedded: bool = False

    def files(self) -> list[Path]:
        """Every file belonging to it: split parts and the pull sidecar (names matched
        exactly, never as glob patterns: see daemon/models/files.py)."""
        if self.embedded:
            return [self.path]
        return list(dict.fromkeys([self.path, *model_files(self.path.parent, self.name)]))

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files() if p.suffix == ".gguf")


def models_dir(args: argparse.Namespace) -> Path:
    if args.models_dir is not None:
        return Path(args.models_dir)
    from daemon.config import Settings

    return Settings().models_dir_or_default()


def local_models(directory: Path) -> list[LocalModel]:
    """The embedded default, then every model in the directory (first split parts only)."""
    embedded = embedded_model_path()
    out = [LocalModel(embedded.stem, embedded, embedded=True)]
    if directory.is_dir():
        for p in sorted(directory.glob("*.gguf")):
            name = served_name(p.name)
            if name is not None:
                out.append(LocalModel(name, p))  # the daemon's name
    return out


def find(directory: Path, name: str) -> LocalModel | None:
    """A model by served name, or by the path of a .gguf file."""
    for m in local_models(directory):
        if m.name == name:
            return m
    if not name.endswith(".gguf"):
        return None
    try:
        p = Path(name).expanduser()
        found = p.is_file()
    except (RuntimeError, OSError):  # `~user` of no such user, a name too long
        return None
    if found:
        return LocalModel(served_name(p.name) or p.stem, p)
    return None


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def cmd_list(args: argparse.Namespace) -> int:
    from quantize.gguf_header import file_type_name, read_header

    rows = [["NAME", "SIZE", "ARCH", "QUANT", "CONTEXT", "MODIFIED"]]
    for m in local_models(models_dir(args)):
        try:
            h = read_header(m.path)
            arch = str(h.get("general.architecture", "?"))
            quant = file_type_name(h.get("general.file_type")) or "-"
            ctx = str(h.get(f"{arch}.context_length") or "-")
        except (OSError, ValueError):
            arch = quant = ctx = "?"
        modified = datetime.fromtimestamp(m.path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        name = f"{m.name} (embedded default)" if m.embedded else m.name
        rows.append([name, human_size(m.size()), arch, quant, ctx, modified])
    print(table(rows))
    return 0


def _meta(path: Path) -> dict[str, Any]:
    """Every scalar key of the GGUF header (arrays such as the vocabulary are left out)."""
    from quantize.gguf_header import ArrayRef, read_header

    return {k: v for k, v in read_header(path).fields.items() if not isinstance(v, ArrayRef)}


def cmd_show(args: argparse.Namespace) -> int:
    from quantize.errors import QuantizeError
    from quantize.info import inspect_gguf

    m = find(models_dir(args), args.model)
    if m is None:
        print(f"edged: no model {args.model!r} here (see `edged list`)", file=sys.stderr)
        return 1
    try:
        info = inspect_gguf(m.path)
        meta = _meta(m.path)
    except (QuantizeError, ValueError, OSError) as exc:
        print(f"edged: {m.path} is not a readable GGUF: {exc}", file=sys.stderr)
        return 1
    license_ = "\n".join(
        f"{k.removeprefix('general.')}: {v}" for k, v in meta.items() if "license" in k
    )
    if args.template:
        print(info.chat_template or "(no chat template: the daemon uses ChatML)")
        return 0
    if args.license:
        print(license_ or "(the GGUF names no license)")
        return 0
    print("  Model")
    for line in info.lines():
        if not line.startswith("chat template"):
            print(f"    {line}")
    print(f"    size:            {human_size(m.size())}")
    sidecar = m.path.with_suffix(".json")
    if sidecar.exists():
        print("\n  Pulled from")
        print("    " + sidecar.read_text().strip().replace("\n", "\n    "))
    print("\n  Parameters (GGUF metadata)")
    skip = ("tokenizer.chat_template", "general.license")
    for k, v in meta.items():
        if not k.startswith(skip):
            print(f"    {k:<40} {v}")
    print("\n  License")
    print("    " + (license_.replace("\n", "\n    ") or "(the GGUF names no license)"))
    print("\n  Template")
    template = info.chat_template or "(none: the daemon uses ChatML)"
    print("    " + template.replace("\n", "\n    "))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete models of the models directory, each with every split part and its sidecar
    (daemon/models' rules; the daemon's own delete also refuses a model in use)."""
    directory = models_dir(args)
    status = 0
    for name in args.model:
        m = find(directory, name)
        if m is None or m.embedded or m.path.parent.resolve() != directory.resolve():
            hint = " (the embedded model ships with edged)" if m is not None and m.embedded else ""
            print(f"edged: no model {name!r} in {directory}{hint}", file=sys.stderr)
            status = 1
            continue
        remove(m.path.parent, m.name)
        print(f"deleted '{m.name}'")
    if status == 0:
        print("a running daemon forgets them on its next rescan (SIGHUP) or restart")
    return status


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def dir_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--models-dir",
            type=Path,
            default=None,
            help="default: $EDGED_MODELS_DIR or ~/.local/share/edged/models",
        )

    ls = sub.add_parser("list", aliases=["ls"], help="models on this machine")
    dir_flag(ls)
    ls.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a model's metadata, parameters, license and template")
    show.add_argument("model")
    show.add_argument("--template", action="store_true", help="only the chat template")
    show.add_argument("--license", action="store_true", help="only the license")
    dir_flag(show)
    show.set_defaults(func=cmd_show)
    rm = sub.add_parser("rm", help="delete models from the models directory")
    rm.add_argument("model", nargs="+")
    dir_flag(rm)
    rm.set_defaults(func=cmd_rm)
