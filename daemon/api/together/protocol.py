"""Request body of the Together-style legacy `POST /inference`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from daemon.api.fields import SamplingFields
from daemon.api.keepalive import KeepAlive


class InferenceRequest(SamplingFields):
    """POST /inference: a prompt, sampling fields and how many completions to return."""

    model: str | None = None
    keep_alive: KeepAlive = None
    prompt: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=0, le=1_000_000)] = 128
    n: Annotated[int, Field(ge=1, le=128)] = 1
