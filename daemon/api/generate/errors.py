"""The request_id dialect's errors: OpenAI's body, with its own name for the output budget."""

from __future__ import annotations

from daemon.api.errors import Shape

SHAPE = Shape(params={"max_tokens": "generation_config.max_new_tokens"})
