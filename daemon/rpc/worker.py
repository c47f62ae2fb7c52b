"""`edged rpc-worker`: lend this machine's CPU/GPU memory to an `edged serve --rpc` daemon.

It runs ggml's own RPC server in-process. That protocol has no authentication and no
encryption: anyone who can reach the port can run any computation on the device and read
what it holds. So the worker binds loopback unless `--allow-remote` is given, and then
belongs behind a firewall, WireGuard, or an SSH tunnel (README: Beyond one machine).
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
import threading

from daemon.config import default_threads

DEFAULT_PORT = 50052


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `rpc-worker` subcommand."""
    p = sub.add_parser("rpc-worker", help="lend this machine's devices to a daemon over RPC")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores)")
    p.add_argument("--cache-dir", default=None, help="cache received tensors here (faster reloads)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="bind a non-loopback address (RPC has no authentication: fence it)",
    )
    return p


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 2 on a refused configuration, 1 when the bind fails."""
    if not 0 < args.port < 65536:
        print(f"edged rpc-worker: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if not args.allow_remote and not is_loopback(args.host):
        print(
            f"edged rpc-worker: refusing to bind {args.host}: the RPC protocol has no "
            "authentication, so anyone reaching the port controls the device; pass "
            "--allow-remote and fence the port (firewall, WireGuard, SSH tunnel)",
            file=sys.stderr,
        )
        return 2
    from daemon.engine.native.ggml_rpc import RPC_MISSING, rpc_available, rpc_start_server

    if not rpc_available():
        print(f"edged rpc-worker: {RPC_MISSING}", file=sys.stderr)
        return 2
    threads = args.threads or default_threads()
    host = f"[{args.host}]" if ":" in args.host else args.host
    endpoint = f"{host}:{args.port}"
    # The server loops in C for good; a daemon thread lets the main thread take signals.
    server = threading.Thread(
        target=rpc_start_server, args=(endpoint, args.cache_dir, threads), daemon=True
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"edged rpc-worker: serving on {endpoint} with {threads} threads", flush=True)
    server.start()
    while not stop.is_set() and server.is_alive():
        stop.wait(0.5)
    if not server.is_alive():
        print(f"edged rpc-worker: could not serve on {endpoint}", file=sys.stderr)
        return 1
    return 0
