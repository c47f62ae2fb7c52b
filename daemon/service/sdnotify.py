"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET per message."""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send `KEY=VALUE` lines to systemd; False when not run under a notifying manager."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "@/":
        return False
    # A leading '@' names a socket in Linux's abstract namespace: its first byte is NUL.
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode(), target)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None if not asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    # systemd sets WATCHDOG_PID so that a child process does not ping on its parent's behalf.
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
