"""Fill-in-the-middle prompts laid out as llama-server's `format_infill` does."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.engine.loading.loaded import LoadedModel
from daemon.errors import InvalidRequest

# llama-server separates context files this way when the vocabulary has no FIM_SEP token.
SNIPPET = "\n\n--- snippet ---\n\n"


def supports_infill(lm: LoadedModel) -> bool:
    """Whether the model's vocabulary declares prefix, suffix and middle tokens."""
    return lm.model.fim.usable


def infill_tokens(
    lm: LoadedModel,
    prefix: str,
    suffix: str,
    extra: Sequence[tuple[str, str]] = (),
    prompt: str = "",
    param: str = "input_prefix",
) -> list[int]:
    """`[BOS] [REP project] [SEP file ...] PRE prefix SUF suffix MID prompt`.

    Client text is data: special-token text in it stays text. Repository context (`extra`
    files) goes first, marked with FIM_REP/FIM_SEP where the vocabulary has them.
    """
    model = lm.model
    fim = model.fim
    if not fim.usable:
        raise InvalidRequest(
            f"`{lm.name}` has no fill-in-the-middle tokens (its GGUF declares no "
            "tokenizer.ggml.fim_pre/suf/mid_token_id)",
            param="model",
            code="model_not_supported",
        )

    def tok(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False) if text else []

    out: list[int] = [model.bos] if model.add_bos and model.bos >= 0 else []
    if fim.rep >= 0:
        out += [fim.rep, *tok("myproject\n")]
    for filename, text in extra:
        if fim.sep >= 0:
            out += [fim.sep, *tok(f"{filename}\n"), *tok(text)]
        else:
            out += tok(SNIPPET + text)
    if fim.sep >= 0:
        out += [fim.sep, *tok("filename\n")]
    out += [fim.pre, *tok(prefix), fim.suf, *tok(suffix), fim.mid, *tok(prompt)]
    lm.check_tokens(out, param)
    return out
