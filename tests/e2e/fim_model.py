"""Test helper: the embedded SmolLM2 with fill-in-the-middle token ids added to its metadata.

SmolLM2's GGUF declares no FIM tokens. This copy points `tokenizer.ggml.fim_*_token_id` at
control tokens the vocabulary already has (it detects `<reponame>` as FIM_REP on its own), so
llama.cpp reports real FIM tokens and /infill has something to lay out.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from tests.conftest import gguf_reader

# SmolLM2 control tokens reused as FIM markers: <gh_stars>, <issue_start>, <issue_comment>,
# <file_sep>.
FIM_IDS = {
    gguf.Keys.Tokenizer.FIM_PRE_ID: 7,
    gguf.Keys.Tokenizer.FIM_SUF_ID: 8,
    gguf.Keys.Tokenizer.FIM_MID_ID: 9,
    gguf.Keys.Tokenizer.FIM_SEP_ID: 5,
}


def write_fim_copy(src: Path, dst: Path) -> Path:
    """Copy `src` to `dst` with the FIM token ids added; return `dst`."""
    reader = gguf_reader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(dst, arch=str(arch.contents()), endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    new = {k: MetadataDetails(gguf.GGUFValueType.UINT32, v) for k, v in FIM_IDS.items()}
    copy_with_new_metadata(reader, writer, new, [])
    return dst
