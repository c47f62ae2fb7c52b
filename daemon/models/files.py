"""The models folder's files: which belong to a model, where each came from, and removing or
copying them. Names are matched exactly (a regex over `os.listdir`), never as glob patterns."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from daemon.engine.loading.names import PROJECTOR_PREFIX
from daemon.errors import Conflict, InvalidRequest

# llama.cpp's split files: <prefix>-00001-of-00003.gguf; the first part loads the rest.
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
# A name a client may give a model (it becomes a file name in the models folder).
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def served_name(filename: str) -> str | None:
    """The model a .gguf file is served as (its stem, a split model's prefix), None for a
    split model's later parts and for other files."""
    m = SPLIT.match(filename)
    if m is not None:
        return m["prefix"] if int(m["i"]) == 1 else None
    return filename[: -len(".gguf")] if filename.endswith(".gguf") else None


def main_file(folder: Path, name: str) -> Path | None:
    """The file a model loads from: `<name>.gguf`, else the first part of a split `<name>`."""
    names = _listdir(folder)
    if f"{name}.gguf" in names:
        return folder / f"{name}.gguf"
    for f in names:
        m = SPLIT.match(f)
        if m is not None and m["prefix"] == name and int(m["i"]) == 1:
            return folder / f
    return None


def model_files(folder: Path, name: str) -> list[Path]:
    """Every file of model `name` in `folder`: `<name>.gguf`, each `<name>-NNNNN-of-MMMMM.gguf`
    part, the pull sidecars (`<name>.json`, `<name>-00001-of-MMMMM.json`) and the vision
    projector paired with its main file (`mmproj-<main file's stem>.gguf`)."""
    out = []
    listing = _listdir(folder)
    for f in listing:
        if f in (f"{name}.gguf", f"{name}.json"):
            out.append(folder / f)
            continue
        stem, dot, ext = f.rpartition(".")
        m = SPLIT.match(f"{stem}.gguf") if dot and ext in ("gguf", "json") else None
        if m is not None and m["prefix"] == name and (ext == "gguf" or int(m["i"]) == 1):
            out.append(folder / f)
    main = main_file(folder, name)
    if main is not None and projector_name(main) in listing:
        out.append(folder / projector_name(main))
    return out


def projector_name(main: Path) -> str:
    """The file name of the vision projector paired with model file `main`."""
    return f"{PROJECTOR_PREFIX}{main.stem}.gguf"


def sidecar_of(path: Path) -> Path:
    """The pull sidecar of a model file (`x.Q4_K_M.gguf` -> `x.Q4_K_M.json`)."""
    return path.with_suffix(".json")


def origin(path: Path) -> str | None:
    """The repository (or import name, or local path) a pulled file came from; None when it
    has no readable sidecar (copied in by hand, or made by /api/copy of such a file)."""
    try:
        repo = json.loads(sidecar_of(path).read_text()).get("repo")
    except (OSError, ValueError, AttributeError):
        return None
    return repo if isinstance(repo, str) else None


def check_target(folder: Path, name: str, label: str, replace: bool) -> None:
    """Conflict when model `name` exists from another source and `replace` is not asked."""
    existing = main_file(folder, name)
    if existing is None or replace:
        return
    came = origin(existing)
    if came is None or came.casefold() != label.casefold():
        raise Conflict(
            f"a model named `{name}` already exists and came from another source; "
            'pull with "replace": true (edged pull --replace) to overwrite it',
            param="model",
        )


def _pulled_projector(target: Path) -> bool:
    """Whether the pull that wrote `target` fetched a vision projector (its sidecar says)."""
    try:
        return bool(json.loads(sidecar_of(target).read_text()).get("projector"))
    except (OSError, ValueError, AttributeError):
        return False


def new_files(target: Path) -> set[Path]:
    """The files a pull of `target` (a single file or a split model's first part) wrote."""
    m = SPLIT.match(target.name)
    if m is None:
        written = {target, sidecar_of(target)}
    else:
        n = int(m["n"])
        written = {
            target.with_name(f"{m['prefix']}-{k:05d}-of-{n:05d}.gguf") for k in range(1, n + 1)
        } | {sidecar_of(target)}
    if _pulled_projector(target):
        written.add(target.with_name(projector_name(target)))
    return written


def remove(folder: Path, name: str) -> list[Path]:
    """Delete every file of model `name` (see `model_files`); the paths removed."""
    gone = []
    for p in model_files(folder, name):
        try:
            p.unlink()
            gone.append(p)
        except FileNotFoundError:
            pass
    return gone


def check_name(name: str, param: str = "destination") -> str:
    """A model name a client chose, or InvalidRequest (it becomes a file name)."""
    name = name.removesuffix(":latest")
    if not NAME.match(name) or SPLIT.match(f"{name}.gguf") or ".." in name:
        raise InvalidRequest(
            f"{param} must be letters, digits, '.', '_' or '-' (it becomes a file name)",
            param=param,
        )
    return name


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make dst a copy of src (a hard link where possible); never overwrite an existing dst."""
    try:
        os.link(src, dst)  # same file system: instant, no extra space; fails if dst exists
        return
    except FileExistsError:
        raise
    except OSError:
        pass
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(src, tmp)
        os.link(tmp, dst)  # atomic, and refuses an existing name
    finally:
        tmp.unlink(missing_ok=True)


def copy_model(src: Path, folder: Path, name: str) -> Path:
    """Copy the model whose main file is `src` (every split part, and its sidecar) into
    `folder` as `name`; Conflict if any of those names exists. The new main file."""
    m = SPLIT.match(src.name)
    if m is None:
        pairs = [(src, folder / f"{name}.gguf")]
    else:
        n = m["n"]
        pairs = [
            (
                src.with_name(f"{m['prefix']}-{k:05d}-of-{n}.gguf"),
                folder / f"{name}-{k:05d}-of-{n}.gguf",
            )
            for k in range(1, int(n) + 1)
        ]
    main = pairs[0][1]
    if sidecar_of(src).is_file():
        pairs.append((sidecar_of(src), sidecar_of(main)))
    projector = src.with_name(projector_name(src))
    if projector.is_file():  # the copy sees images as the original does
        pairs.append((projector, main.with_name(projector_name(main))))
    folder.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    try:
        for a, b in pairs:
            _link_or_copy(a, b)
            done.append(b)
    except FileExistsError as exc:
        for p in done:
            p.unlink(missing_ok=True)
        raise Conflict(f"a model named `{name}` already exists", param="destination") from exc
    except OSError:
        for p in done:
            p.unlink(missing_ok=True)
        raise
    return main
