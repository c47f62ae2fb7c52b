"""`edged ps`: what the running daemon has loaded (GET /admin/ps)."""

from __future__ import annotations

import argparse
import time

from daemon.cli.client import (
    NoDaemon,
    add_daemon_flags,
    client,
    error_text,
    fail,
    no_daemon_message,
    request,
)
from daemon.cli.local import human_size, table


def _until(expires_at: float | None, default: bool) -> str:
    if expires_at is None:
        return "stays loaded (default model)" if default else "until evicted"
    left = max(0.0, expires_at - time.time())
    if left < 90:
        return f"{left:.0f} seconds from now"
    if left < 5400:
        return f"{left / 60:.0f} minutes from now"
    return f"{left / 3600:.1f} hours from now"


def cmd_ps(args: argparse.Namespace) -> int:
    with client(args) as http:
        try:
            resp = request(http, "GET", "/admin/ps")
        except NoDaemon:
            return fail(no_daemon_message(str(http.base_url)))
    if resp.status_code != 200:
        return fail(f"edged ps: {error_text(resp)}")
    rows = [["NAME", "SLOTS", "MEMORY", "GPU", "CONTEXT", "UNTIL"]]
    for m in resp.json()["models"]:
        rows.append(
            [
                m["name"],
                f"{m['busy_slots']}/{m['slots']} busy",
                human_size(m["memory_bytes"]),
                f"{m['gpu_layers']}/{m['n_layers']} layers" if m["gpu_layers"] else "cpu",
                str(m["ctx_size"]),
                _until(m["expires_at"], m["default"]),
            ]
        )
    print(table(rows))
    return 0


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ps", help="models the running daemon has loaded")
    add_daemon_flags(p)
    p.set_defaults(func=cmd_ps)
