"""`pull`: bring a repository's model into the models directory as a GGUF of one type."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from quantize.checkpoint import Checkpoint
from quantize.convert import convert
from quantize.errors import FetchError
from quantize.fetch import fetch_hub, list_hub, list_local
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
    # The file as written (a rename keeps both): a reader may trust `sha256` while they match.
    size: int = 0
    mtime_ns: int = 0
    # The vision projector fetched beside the model (mmproj-<stem>.gguf): the repository's
    # file name and its sha256; None when the repository has none.
    projector: dict[str, str] | None = None


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


def is_model_gguf(path: str) -> bool:
    """A GGUF of a model, not a vision projector or an importance matrix (what llama.cpp's
    `-hf` skips when it picks a repository's model file)."""
    name = Path(path).name.lower()
    return name.endswith(".gguf") and "mmproj" not in name and "imatrix" not in name


def pick_gguf(files: tuple[str, ...], qtype: str) -> str | None:
    """The repository's model GGUF of that type, if any (the shortest name wins among
    several; of a split model, its first part)."""
    matches = [
        f
        for f in files
        if is_model_gguf(f)
        and type_pattern(qtype).search(Path(f).name)
        and not ((m := SPLIT.match(f)) and int(m["i"]) != 1)
    ]
    return min(matches, key=len) if matches else None


def _bits(name: str) -> int:
    """The bits per weight a file name's type tag says (F32 32, BF16/F16 16, Q8_0 8, IQ4 4),
    0 when it names none."""
    m = re.search(r"(?<![A-Za-z0-9])(?:I?Q|B?F)(\d+)", Path(name).name, re.IGNORECASE)
    return int(m[1]) if m else 0


def pick_projector(files: tuple[str, ...], model: str) -> str | None:
    """The vision projector to fetch with `model` (a repository path), as llama.cpp's `-hf`
    picks one: a .gguf with "mmproj" in its name in the model's folder or one above it, the
    deepest such folder first, then the type closest in bits to the model's (the shortest
    name among equals)."""
    folder = Path(model).parent.parts
    bits = _bits(model)
    best: tuple[int, int, int, str] | None = None
    for f in files:
        p = Path(f)
        if not f.lower().endswith(".gguf") or "mmproj" not in p.name.lower():
            continue
        if p.parent.parts != folder[: len(p.parent.parts)]:
            continue  # another branch of the tree: another model's
        key = (-len(p.parent.parts), abs(_bits(f) - bits), len(f), f)
        if best is None or key < best:
            best = key
    return best[3] if best else None


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
    *,
    local_dir: Path | None = None,
    name: str | None = None,
    before_write: Callable[[Path], None] | None = None,
) -> Path:
    """Fetch repo_id into <models_dir>/<name>.<TYPE>.gguf plus a JSON sidecar; return the GGUF.

    `repo_id` is a hub repository, never looked up on the local file system; a local
    checkpoint or GGUF directory is `local_dir` (then `repo_id` only labels the sidecar).
    `name` overrides the file stem (default: `model_name(repo_id)`). Everything is made in a
    temporary folder beside the output; `before_write(target)` runs just before the files are
    renamed into place (it may raise to refuse), and each rename is atomic (`os.replace`).
    """
    qtype = normalize_type(type)
    out_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if local_dir is not None:
        listing = list_local(local_dir)
        rev = None
    else:
        listing = list_hub(repo_id, revision, endpoint)
        rev = listing.sha or revision
    stem = f"{name or model_name(repo_id)}.{qtype}"
    target = out_dir / f"{stem}.gguf"

    def get(files: list[str] | None) -> Path:
        if local_dir is not None:
            return local_dir
        return fetch_hub(repo_id, rev, files, endpoint)

    exact = pick_gguf(listing.files, qtype)
    full = next((f for t in FULL_PRECISION if (f := pick_gguf(listing.files, t))), None)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=out_dir) as work_dir:
        work = Path(work_dir)
        made: list[tuple[Path, Path]] = []  # (made in work, its final path)
        if exact is not None and SPLIT.match(exact):
            parts = split_parts(listing.files, exact)
            snapshot = get(parts)
            sources = {f: sha256_file(snapshot / f) for f in parts}
            n = len(parts)
            for k, f in enumerate(parts, 1):
                # llama.cpp finds the other parts by this exact naming next to the first.
                part = f"{stem}-{k:05d}-of-{n:05d}.gguf"
                shutil.copyfile(snapshot / f, work / part)
                made.append((work / part, out_dir / part))
            target = out_dir / f"{stem}-00001-of-{n:05d}.gguf"
            how = "gguf"
        elif exact is not None:
            src = get([exact]) / exact
            sources = {exact: sha256_file(src)}
            shutil.copyfile(src, work / target.name)
            made.append((work / target.name, target))
            how = "gguf"
        elif full is not None:
            src = get([full]) / full
            sources = {full: sha256_file(src)}
            quantize_gguf(src, work / target.name, qtype, threads, progress)
            made.append((work / target.name, target))
            how = "gguf+quantize"
        elif any(f.endswith(".safetensors") for f in listing.files):
            snapshot = get(None)
            checkpoint = Checkpoint(snapshot)
            # Only the files the conversion reads (the index's shards, when there is one).
            sources = {
                str(p.relative_to(snapshot)): sha256_file(p)
                for p in sorted({ref.file for ref in checkpoint})
            }
            intermediate = work / "model.intermediate.gguf"
            convert(snapshot, intermediate, intermediate_type(checkpoint, qtype), progress)
            quantize_gguf(intermediate, work / target.name, qtype, threads, progress)
            made.append((work / target.name, target))
            how = "safetensors"
        else:
            ggufs = [f for f in listing.files if is_model_gguf(f)]
            have = f"GGUF files {', '.join(ggufs)}" if ggufs else "no GGUF or safetensors files"
            raise FetchError(f"{repo_id}: no {qtype} GGUF and nothing to convert ({have})")

        picked = exact or full
        projector = pick_projector(listing.files, picked) if picked else None
        projector_sha = None
        if projector is not None:
            # Paired by name (mmproj-<stem>.gguf beside <stem>.gguf), as the daemon finds it.
            src = get([projector]) / projector
            projector_sha = sha256_file(src)
            beside = f"mmproj-{target.stem}.gguf"
            shutil.copyfile(src, work / beside)
            made.append((work / beside, out_dir / beside))
        sidecar = Sidecar(
            repo=repo_id,
            revision=rev,
            requested_revision=revision,
            source=how,
            source_files=sources,
            source_sha256=_combined_sha(sources),
            type=qtype,
            sha256=sha256_file(made[0][0]),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            size=made[0][0].stat().st_size,
            mtime_ns=made[0][0].stat().st_mtime_ns,
            projector={"file": projector, "sha256": projector_sha}
            if projector is not None and projector_sha is not None
            else None,
        )
        side = work / target.with_suffix(".json").name
        side.write_text(json.dumps(asdict(sidecar), indent=2) + "\n")
        made.append((side, target.with_suffix(".json")))
        if before_write is not None:
            before_write(target)
        for tmp, final in made:
            os.chmod(tmp, _plain_mode())
            os.replace(tmp, final)
    log.info("pulled %s -> %s", repo_id, target)
    return target


def _plain_mode() -> int:
    """The permissions a plain open() gives a new file (temporary files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
