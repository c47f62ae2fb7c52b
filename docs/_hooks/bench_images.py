"""mkdocs hook: the figures bench/RESULTS.md shows (bench/*.png) become files of the site, so
the benchmarks page, which includes RESULTS.md as it is, finds them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

BENCH = Path(__file__).resolve().parents[2] / "bench"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add bench/*.png at the root of the docs, where RESULTS.md's relative links point."""
    for png in sorted(BENCH.glob("*.png")):
        files.append(File.generated(config, png.name, abs_src_path=str(png)))
    return files
