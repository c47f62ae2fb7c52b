"""llama-server's error shape: `{"error": {"code", "message", "type"}}`."""

from __future__ import annotations

from typing import Any

from daemon.api.errors import Failure, Shape, every_field


def _body(f: Failure) -> dict[str, Any]:
    return {"error": {"code": f.status, "message": f.message, "type": f.kind}}


SHAPE = Shape(body=_body, validation=every_field)
