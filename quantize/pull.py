"""`pull`: bring a repository's model into the models directory as a GGUF of one type."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from quantize.atomic import atomic_output
from quantize.checkpoint import Checkpoint
from quantize.convert import convert
from quantize.errors import FetchError
from quantize.fetch import fetch, list_repo
from quantize.quantize import normalize_type, quantize_gguf

log = logging.getLogger(__name__)

# GGUFs a repository may hold that llama.cpp can quantize from without loss of a quantized source.
FULL_PRECISION = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class Sidecar:
    """Provenance written next to a pulled model as <name>.<TYPE>.json."""

    repo: str
    revision: str | None
    requested_revision: str | None
    source: str  # "gguf", "gguf+quantize" or "safetensors"
    source_files: dict[str, str]  # file name -> sha256
    source_sha256: str
    type: str
    sha256: str
    created: str


def default_models_dir() -> Path:
    """EDGED_MODELS_DIR, else ~/.local/share/edged/models."""
    env = os.environ.get("EDGED_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".local/share/edged/models"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def type_pattern(qtype: str) -> re.Pattern[str]:
    """Matches a type tag in a file name: 'Q4_K_M' in 'x.Q4_K_M.gguf' but not 'Q4_K' in it."""
    return re.compile(
        rf"(?<![A-Za-z0-9]){re.escape(qtype)}(?![A-Za-z0-9]|_[A-Za-z0-9])", re.IGNORECASE
    )


# llama.cpp's split files: <prefix>-00001-of-00003.gguf; the first part loads the rest.
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)


def pick_gguf(files: tuple[str, ...], qtype: str) -> str | None:
    """The repository GGUF of that type, if any (the shortest name wins among several; of a
    split model, its first part)."""
    matches = [
        f
        for f in files
        if f.lower().endswith(".gguf")
        and type_pattern(qtype).search(Path(f).name)
        and not ((m := SPLIT.match(f)) and int(m["i"]) != 1)
    ]
    return min(matches, key=len) if matches else None


def split_parts(files: tuple[str, ...], first: str) -> list[str]:
    """Every part of the split model whose first part is `first` ([first] if not split)."""
    m = SPLIT.match(first)
    if m is None:
        return [first]
    parts = [f for f in files if (p := SPLIT.match(f)) and p["prefix"] == m["prefix"]]
    return sorted(p for p in parts if SPLIT.match(p)["n"] == m["n"])  # type: ignore[index]


def split_model_ref(ref: str, default_quant: str = "Q4_K_M") -> tuple[str, str]:
    """`owner/name:Q4_K_M` -> (repo, quant); the quant defaults to Q4_K_M."""
    repo, sep, quant = ref.rpartition(":")
    if not sep or "/" in quant or not repo:
        return ref, default_quant
    return repo, quant


def model_name(repo_id: str) -> str:
    """File stem for a repo: its last path part without a '-GGUF' suffix."""
    name = Path(repo_id.rstrip("/")).name
    return re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE) or "model"


def pull(
    repo_id: str,
    type: str,
    models_dir: Path | str | None = None,
    revision: str | None = None,
    threads: int | None = None,
    endpoint: str | None = None,
    progress: bool = True,
) -> Path:
    """Fetch repo_id into <models_dir>/<name>.<TYPE>.gguf plus a JSON sidecar; return the GGUF."""
    qtype = normalize_type(type)
    out_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = list_repo(repo_id, revision, endpoint)
    rev = listing.sha or revision
    target = out_dir / f"{model_name(repo_id)}.{qtype}.gguf"

    exact = pick_gguf(listing.files, qtype)
    full = next((f for t in FULL_PRECISION if (f := pick_gguf(listing.files, t))), None)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=out_dir) as work:
        if exact is not None and SPLIT.match(exact):
            parts = split_parts(listing.files, exact)
            snapshot = fetch(repo_id, rev, parts, endpoint)
            sources = {f: sha256_file(snapshot / f) for f in parts}
            n = len(parts)
            for k, f in enumerate(parts, 1):
                # llama.cpp finds the other parts by this exact naming next to the first.
                part = out_dir / f"{target.stem}-{k:05d}-of-{n:05d}.gguf"
                with atomic_output(part) as tmp:
                    shutil.copyfile(snapshot / f, tmp)
            target = out_dir / f"{target.stem}-00001-of-{n:05d}.gguf"
            how = "gguf"
        elif exact is not None:
            src = fetch(repo_id, rev, [exact], endpoint) / exact
            sources = {exact: sha256_file(src)}
            with atomic_output(target) as tmp:
                shutil.copyfile(src, tmp)
            how = "gguf"
        elif full is not None:
            src = fetch(repo_id, rev, [full], endpoint) / full
            sources = {full: sha256_file(src)}
            quantize_gguf(src, target, qtype, threads, progress)
            how = "gguf+quantize"
        elif any(f.endswith(".safetensors") for f in listing.files):
            snapshot = fetch(repo_id, rev, None, endpoint)
            checkpoint = Checkpoint(snapshot)
            # Only the files the conversion reads (the index's shards, when there is one).
            sources = {
                str(p.relative_to(snapshot)): sha256_file(p)
                for p in sorted({ref.file for ref in checkpoint})
            }
            intermediate = Path(work) / "model.gguf"
            convert(snapshot, intermediate, intermediate_type(checkpoint, qtype), progress)
            quantize_gguf(intermediate, target, qtype, threads, progress)
            how = "safetensors"
        else:
            ggufs = [f for f in listing.files if f.lower().endswith(".gguf")]
            have = f"GGUF files {', '.join(ggufs)}" if ggufs else "no GGUF or safetensors files"
            raise FetchError(f"{repo_id}: no {qtype} GGUF and nothing to convert ({have})")

    sidecar = Sidecar(
        repo=repo_id,
        revision=rev,
        requested_revision=revision,
        source=how,
        source_files=sources,
        source_sha256=_combined_sha(sources),
        type=qtype,
        sha256=sha256_file(target),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    with atomic_output(target.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(asdict(sidecar), indent=2) + "\n")
    log.info("pulled %s -> %s", repo_id, target)
    return target


def intermediate_type(checkpoint: Checkpoint, qtype: str) -> str:
    """The converter output to quantize from: never F16 for a BF16 checkpoint.

    BF16 reaches 3.4e38 while F16 stops at 65504; a BF16 checkpoint goes through a BF16
    intermediate (lossless), an F32/F16 one through F16 (the converter refuses any value
    F16 cannot hold rather than write inf).
    """
    if qtype in ("F32", "BF16"):
        return "f32"
    if any(ref.dtype == "BF16" for ref in checkpoint):
        return "bf16"
    return "f16"


def _combined_sha(sources: dict[str, str]) -> str:
    """One sha for the sources: the file's own for one file, else sha256 of `sha256sum` lines."""
    if len(sources) == 1:
        return next(iter(sources.values()))
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(sources.items()))
    return hashlib.sha256(lines.encode()).hexdigest()
