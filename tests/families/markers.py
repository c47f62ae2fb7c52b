"""A copy of the embedded model whose unused control tokens are renamed to family markers, so
the markers are single control tokens as in the families' own vocabularies."""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from tests.conftest import gguf_reader

# SmolLM2's unused control tokens (code-dataset markers) and the markers they become.
RENAMED = {
    4: "<|python_tag|>",
    5: "<|channel|>",
    6: "<|message|>",
    7: "[TOOL_CALLS]",
    8: "<|START_ACTION|>",
    9: "<|END_ACTION|>",
}
KEPT = 3  # `<repo_name>` stays: a control token that is no family's marker


def make_marker_gguf(
    source: Path, out: Path, template: str | None = None, renamed: dict[int, str] = RENAMED
) -> Path:
    """`source` with `renamed`'s tokens renamed (still control tokens), and a chat template."""
    reader = gguf_reader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tokens = list(reader.fields[gguf.Keys.Tokenizer.LIST].contents())
    for i, text in renamed.items():
        tokens[i] = text
    new = {
        gguf.Keys.Tokenizer.LIST: MetadataDetails(
            gguf.GGUFValueType.ARRAY, tokens, sub_type=gguf.GGUFValueType.STRING
        )
    }
    if template is not None:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(
            gguf.GGUFValueType.STRING, template
        )
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, new, [])
    return out
