"""What the HTTP side and the service runner share: draining, and requests in flight."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.core.watch import RequestRecord


@dataclass
class ServiceState:
    """Flipped by SIGTERM; counted by the HTTP middleware."""

    draining: bool = False
    inflight: int = 0
    records: set[RequestRecord] = field(default_factory=set)  # of the requests in flight
