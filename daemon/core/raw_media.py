"""Media in a raw (untemplated) prompt: one marker per file in the prompt's text, and the
prompt shown back as text with the markers where its media were."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from daemon.core import request as core
from daemon.core.choices import Policy
from daemon.core.errors import to_api
from daemon.core.media import check_media
from daemon.core.prompt import media_names
from daemon.core.watch import request_owner
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.media import MediaPrompt, Medium, is_stand_in
from daemon.errors import EdgedError, InvalidRequest

MARKER = core.MEDIA_MARKER


async def raw_media_prompt(
    lm: LoadedModel,
    text: str,
    parts: Sequence[core.MediaPart],
    policy: Policy,
    param: str,
) -> tuple[list[int], MediaPrompt]:
    """`text` holding one MARKER per file of `parts`, which take their places in order: the
    files checked against the policy's limits, then tokenized and encoded off the event loop.
    Refusals name the dialect's field for the files (`param`), or `prompt` for the text."""
    marks = text.count(MARKER)
    if marks != len(parts):
        raise InvalidRequest(
            f"the prompt holds {marks} {MARKER} markers for {len(parts)} files: one marker "
            "per file, in their order",
            param="prompt",
        )
    check_media(
        core.ChatRequest(messages=(core.Message("user", text, media=tuple(parts)),)), policy, param
    )
    media = [Medium(p.data, p.digest, p.kind) for p in parts]
    try:
        return await asyncio.to_thread(
            lm.media_prompt,
            text,
            media,
            policy.max_image_pixels,
            request_owner(),
            policy.max_audio_seconds,
        )
    except EdgedError as exc:
        raise to_api(exc, media_names(param)) from exc


def prompt_text(lm: LoadedModel, tokens: Sequence[int]) -> str:
    """The prompt as text, each run of media stand-ins shown as one MARKER."""
    out: list[str] = []
    text: list[int] = []
    in_media = False
    for t in tokens:
        if is_stand_in(t):
            if not in_media:
                out += [lm.model.detokenize(text, special=True), MARKER]
                text = []
            in_media = True
        else:
            text.append(t)
            in_media = False
    out.append(lm.model.detokenize(text, special=True))
    return "".join(out)
