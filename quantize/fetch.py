"""Download repository files through huggingface_hub (cache, HF_TOKEN, resume, progress)."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quantize.errors import FetchError

log = logging.getLogger(__name__)

# What a conversion needs: config, tokenizer files, weights (safetensors only), ST pooling config.
CHECKPOINT_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "modules.json",
    "*/config.json",
    "*.safetensors",
    "model.safetensors.index.json",
)
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class RepoListing:
    """A repository at one commit: its sha (None for a local directory) and file names."""

    repo_id: str
    sha: str | None
    files: tuple[str, ...]
    local_dir: Path | None = None


def is_local(repo_id: str) -> bool:
    """A REPO_ID naming an existing directory is used in place (the `edged-quantize` CLI's
    convenience for its local user; library callers pass `local_dir` to `pull` instead)."""
    try:
        return Path(repo_id).expanduser().is_dir()
    except (RuntimeError, OSError):  # `~user` of no such user, a name too long
        return False


def list_local(root: Path) -> RepoListing:
    """A local directory's files as a repository listing (symbolic links to directories are
    not followed)."""
    files: list[str] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                files.append(str(path.relative_to(root)))
    return RepoListing(str(root), None, tuple(sorted(files)), root)


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    errors: list[type[BaseException]] = [
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OSError,
    ]
    try:  # huggingface_hub's transport; connection failures surface as its exceptions
        import httpx2

        errors.append(httpx2.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def list_repo(
    repo_id: str, revision: str | None = None, endpoint: str | None = None
) -> RepoListing:
    """Resolve revision to a commit sha and list the repository's files (a local directory's
    when `repo_id` names one: see `is_local`)."""
    if is_local(repo_id):
        return list_local(Path(repo_id).expanduser())
    return list_hub(repo_id, revision, endpoint)


def list_hub(repo_id: str, revision: str | None = None, endpoint: str | None = None) -> RepoListing:
    """A hub repository at `revision`: its commit sha and file names (never a local path)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
    except _hub_errors() as e:
        raise FetchError(f"{repo_id}@{revision or 'main'}: {_first_line(e)}") from e
    files = tuple(s.rfilename for s in info.siblings or [])
    return RepoListing(repo_id, info.sha, files)


def fetch(
    repo_id: str,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    endpoint: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Download the needed files of repo_id (default: a checkpoint's); return the snapshot path.
    A `repo_id` naming a local directory is returned as it is (see `is_local`)."""
    if is_local(repo_id):
        return Path(repo_id).expanduser()
    return fetch_hub(repo_id, revision, include, endpoint, cache_dir)


def hub_cache() -> Path:
    """The Hugging Face cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub,
    else ~/.cache/huggingface/hub). huggingface_hub reads it once, when it is first
    imported: a process whose HF_HOME changes later (a test, a daemon given another home)
    would otherwise keep writing to the first one."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(home).expanduser() / "hub"


def fetch_hub(
    repo_id: str,
    revision: str | None = None,
    include: Sequence[str] | None = None,
    endpoint: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """`fetch` from the hub only: `repo_id` is never looked up on the local file system."""
    from huggingface_hub import snapshot_download

    cache_dir = cache_dir or hub_cache()

    def download(patterns: list[str]) -> Path:
        log.info("fetching %s@%s (%s)", repo_id, revision or "main", ", ".join(patterns))
        try:
            return Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    allow_patterns=patterns,
                    endpoint=endpoint,
                    cache_dir=cache_dir,
                )
            )
        except _hub_errors() as e:
            raise FetchError(f"{repo_id}@{revision or 'main'}: {_first_line(e)}") from e

    if include:
        return download(list(include))
    # Small files first: with a safetensors index, the weights are exactly the files it names
    # (Mistral's repos also ship consolidated.safetensors, which would double the download).
    small = [p for p in CHECKPOINT_PATTERNS if p != "*.safetensors"]
    path = download(small)
    return download([*small, *_weight_files(path)])


def _weight_files(snapshot: Path) -> list[str]:
    """The safetensors files to download: the index's shards, else every *.safetensors."""
    index = snapshot / INDEX_FILE
    if not index.is_file():
        return ["*.safetensors"]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({str(f) for f in weight_map.values()})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FetchError(f"{INDEX_FILE}: unreadable weight map ({e})") from e
    # Names are matched as globs; escape the characters fnmatch treats specially.
    return [glob.escape(f) for f in files]


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
