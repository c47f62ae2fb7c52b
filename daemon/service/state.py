"""What the HTTP side and the service runner share: draining, and requests in flight."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServiceState:
    """Flipped by SIGTERM; counted by the HTTP middleware."""

    draining: bool = False
    inflight: int = 0
