"""The access log: one record per API request, JSON with --log-json, request id echoed."""

from __future__ import annotations

import json
import logging

import pytest
from litestar.testing import TestClient

from daemon.app import create_app
from daemon.config import Settings


def test_json_access_log_line(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(log_json=True, threads=1, parallel=1, ctx_size=256))
    with TestClient(app) as c, caplog.at_level(logging.INFO, logger="edged.access"):
        r = c.get("/v1/models", headers={"x-request-id": "req-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
        c.get("/health")  # probes are not logged
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "edged.access"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["request_id"] == "req-42" and line["path"] == "/v1/models"
    assert line["status"] == 200 and line["method"] == "GET" and line["duration_ms"] >= 0
    assert {"model", "prompt_tokens", "completion_tokens", "client"} <= set(line)
