"""Where a model may come from: a hub repository, or a file under the operator's import directory.

Request text never reaches the file system: a hub id is checked against the hub's own charset
before anything is fetched, and an import name is resolved inside the import directory or
refused. The CLI (a local user with their own rights) may also name a directory of theirs.

Syntax (the same for /admin/pull, Ollama's /api/pull and `edged pull`):

- `[hf.co/|huggingface.co/|https://huggingface.co/]owner/name[:TYPE]`, e.g.
  `bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M`; `:latest` or no tag is the default type.
- `import:RELATIVE/NAME[:TYPE]`: a directory (a GGUF or safetensors repository layout) or one
  `.gguf` file under `--import-dir`, named relative to it with `/` between parts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import InvalidRequest

DEFAULT_TYPE = "Q4_K_M"
IMPORT_PREFIX = "import:"
HUB_PREFIXES = ("https://huggingface.co/", "huggingface.co/", "hf.co/")
REPO_ERROR = "model must name a hub repository owner/name[:TYPE]"
IMPORT_HINT = " or import:NAME[:TYPE] from the import directory"
# Hugging Face's rules for each half of a repo id: letters, digits, '-', '_', '.'; no '--' or
# '..'; neither starting nor ending with '-' or '.'; 96 characters at most.
_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_MAX_REPO = 96
# A revision: a branch, tag or commit (`refs/pr/1` included).
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# One component of an import name.
_IMPORT_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,127}$")
_MAX_IMPORT_PARTS = 8
# Most entries walked under one import source (a repository is dozens of files).
_MAX_IMPORT_ENTRIES = 10_000


@dataclass(frozen=True)
class HubSource:
    """A validated hub repository id (no host prefix), its type and revision."""

    repo: str
    type: str
    revision: str | None = None

    @property
    def label(self) -> str:
        """The identity a pulled file records (its sidecar's `repo`)."""
        return self.repo

    @property
    def name(self) -> str:
        """The file stem before the type: the repo's name without a `-GGUF` suffix."""
        from quantize.pull import model_name

        return model_name(self.repo)


@dataclass(frozen=True)
class LocalSource:
    """A directory (or one .gguf file) on this machine, resolved; `label` is what a client
    named (an import name) or, for the CLI's own user, the resolved path."""

    path: Path
    type: str
    label: str
    name: str


Source = HubSource | LocalSource


def _refuse(import_dir: Path | None) -> InvalidRequest:
    hint = IMPORT_HINT if import_dir is not None else ""
    return InvalidRequest(REPO_ERROR + hint, param="model")


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def split_type(text: str, default_type: str = DEFAULT_TYPE) -> tuple[str, str]:
    """`ref[:TYPE]` as (ref, canonical TYPE); `latest` or no tag is `default_type`."""
    from quantize.errors import UnknownType
    from quantize.quantize import normalize_type

    ref, sep, tag = text.rpartition(":")
    if not sep or "/" in tag or not ref:
        ref, tag = text, ""
    try:
        return ref, normalize_type(default_type if tag in ("", "latest") else tag)
    except UnknownType as exc:
        raise InvalidRequest(str(exc), param="model") from exc


def valid_repo(repo: str) -> bool:
    """Whether `repo` is a hub repository id `owner/name` by the hub's own rules."""
    parts = repo.split("/")
    return (
        len(repo) <= _MAX_REPO
        and len(parts) == 2
        and all(_PART.match(p) and ".." not in p and "--" not in p for p in parts)
    )


def check_revision(revision: str | None) -> str | None:
    """A branch, tag or commit name, or InvalidRequest (it becomes part of a URL and of the
    hub cache's paths)."""
    if revision is None:
        return None
    if (
        not _printable(revision)
        or not _REVISION.match(revision)
        or ".." in revision
        or "//" in revision
        or revision.endswith("/")
    ):
        raise InvalidRequest(
            "revision must be a branch, tag or commit name (letters, digits, '.', '_', '-', '/')",
            param="revision",
        )
    return revision


def parse_hub(
    text: str,
    default_type: str = DEFAULT_TYPE,
    revision: str | None = None,
    import_dir: Path | None = None,
) -> HubSource:
    """`[hf.co/]owner/name[:TYPE]` as a HubSource, or the one InvalidRequest that says what a
    model reference must look like (and nothing about the file system)."""
    if not isinstance(text, str) or len(text) > 300 or not _printable(text):
        raise _refuse(import_dir)
    for host in HUB_PREFIXES:
        if text.startswith(host):
            text = text[len(host) :]
            break
    ref, sep, tag = text.rpartition(":")
    repo = ref if sep and "/" not in tag and ref else text
    if not valid_repo(repo):
        raise _refuse(import_dir)
    _, qtype = split_type(text, default_type)
    return HubSource(repo, qtype, check_revision(revision))


def _not_imported(rel: str) -> InvalidRequest:
    return InvalidRequest(f"no `{IMPORT_PREFIX}{rel}` in the import directory", param="model")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_tree(top: Path, root: Path, rel: str) -> None:
    """Refuse a source directory with an entry that resolves outside the import directory."""
    seen = 0
    for folder, dirs, names in os.walk(top, followlinks=False):
        for entry in (*dirs, *names):
            seen += 1
            if seen > _MAX_IMPORT_ENTRIES:
                raise InvalidRequest(
                    f"`{IMPORT_PREFIX}{rel}` holds too many files to import", param="model"
                )
            path = Path(folder) / entry
            if path.is_symlink() and not _inside(path.resolve(), root):
                raise InvalidRequest(
                    f"`{IMPORT_PREFIX}{rel}` links outside the import directory", param="model"
                )


def parse_import(
    text: str, import_dir: Path | None, default_type: str = DEFAULT_TYPE
) -> LocalSource:
    """`import:RELATIVE/NAME[:TYPE]` resolved inside the import directory, or InvalidRequest.

    The name is relative parts of letters, digits, '.', '_', '-', '+' and spaces (no part
    starts with '.' or '-', so no '..', no hidden files); its resolved path (symlinks followed)
    must stay inside the import directory, and so must every link under a directory source.
    A missing name and one that escapes get the same answer.
    """
    if import_dir is None:
        raise InvalidRequest(
            "this daemon has no import directory (--import-dir); name a hub repository "
            "owner/name[:TYPE]",
            param="model",
        )
    if not isinstance(text, str) or len(text) > 600 or not _printable(text):
        raise _refuse(import_dir)
    body = text[len(IMPORT_PREFIX) :]
    rel, qtype = split_type(body, default_type)
    parts = rel.split("/")
    if len(parts) > _MAX_IMPORT_PARTS or not all(_IMPORT_PART.match(p) for p in parts):
        raise _refuse(import_dir)
    try:
        root = import_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise InvalidRequest("the import directory is unavailable", param="model") from exc
    try:
        path = root.joinpath(*parts).resolve(strict=True)
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, RuntimeError) as exc:
        raise _not_imported(rel) from exc
    if not _inside(path, root) or path == root:
        raise _not_imported(rel)
    if is_dir:
        _check_tree(path, root, rel)
        name = parts[-1]
    elif is_file and path.suffix.lower() == ".gguf":
        name = _strip_type(path.stem, qtype)
    else:
        raise _not_imported(rel)
    return LocalSource(path, qtype, f"{IMPORT_PREFIX}{rel}", _stem_of(name))


def parse_source(
    text: str,
    *,
    import_dir: Path | None = None,
    default_type: str = DEFAULT_TYPE,
    revision: str | None = None,
) -> Source:
    """What a request's `model` names: an import (`import:...`) or a hub repository."""
    if isinstance(text, str) and text.startswith(IMPORT_PREFIX):
        if revision is not None:
            raise InvalidRequest("an import has no revision", param="revision")
        return parse_import(text, import_dir, default_type)
    return parse_hub(text, default_type, revision, import_dir)


def parse_local_user(
    text: str, default_type: str = DEFAULT_TYPE, revision: str | None = None
) -> Source:
    """What `edged pull` names: a directory or .gguf file of the user's own (the CLI runs with
    their rights), else a hub repository under the same rules as a request's."""
    path_text, qtype = text, ""
    ref, sep, tag = text.rpartition(":")
    if sep and ref and "/" not in tag:
        path_text, qtype = ref, tag
    try:
        path = Path(path_text).expanduser()
        local = path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf")
    except (RuntimeError, OSError):  # `~user` of no such user, a name too long: no path
        local = False
    if local:
        _, canon = split_type(f"x:{qtype}" if qtype else "x", default_type)
        resolved = path.resolve()
        name = resolved.name if path.is_dir() else _strip_type(resolved.stem, canon)
        return LocalSource(resolved, canon, str(resolved), _stem_of(name))
    return parse_hub(text, default_type, revision)


def _strip_type(stem: str, qtype: str) -> str:
    """`foo.Q8_0` -> `foo`: the file stem of a GGUF without its type tag."""
    return re.sub(rf"[-_.]{re.escape(qtype)}$", "", stem, flags=re.IGNORECASE) or stem


def _stem_of(name: str) -> str:
    """A file stem from a directory or file name: no `-GGUF` suffix, no spaces or '+'."""
    from quantize.pull import model_name

    stem = re.sub(r"[^A-Za-z0-9._-]", "_", model_name(name)).lstrip(".-")
    return stem or "model"
