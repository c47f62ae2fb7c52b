"""Ollama's error shape: `{"error": "message"}` with the status of the failure."""

from __future__ import annotations

from typing import Any

from daemon.api.errors import Failure, Shape, validation_items


def _body(f: Failure) -> dict[str, Any]:
    return {"error": f.message}


def _validation(extra: Any, detail: str) -> tuple[str, str | None]:
    parts = [f"{k}: {m}" for k, m in validation_items(extra) if k]
    return "; ".join(parts) or "invalid request body", None


SHAPE = Shape(body=_body, validation=_validation)
