"""`--rpc` parsing and the worker's loopback rule (no RPC build needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from daemon.config import Settings
from daemon.rpc.cluster import parse_endpoints
from daemon.rpc.worker import is_loopback


def test_endpoints_parse() -> None:
    assert parse_endpoints("10.0.0.2:50052, gpu-box:1,[::1]:7") == [
        ("10.0.0.2", 50052),
        ("gpu-box", 1),
        ("::1", 7),
    ]
    assert parse_endpoints("") == []


@pytest.mark.parametrize("bad", ["host", "host:", ":50052", "h:0", "h:70000", "h:5x"])
def test_malformed_endpoints_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_endpoints(bad)
    with pytest.raises(ValidationError):
        Settings(rpc=bad)


def test_loopback_rule() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("no-such-host.invalid")
