"""What this daemon is built of: edged's version and the llama.cpp bindings' (what the engine
runs), as the CLI, `/props`, Ollama's `/version` and OpenAI's `system_fingerprint` say it."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


def _installed(package: str, missing: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return missing


@cache
def edged_version() -> str:
    """edged's own version ("unknown" when run from a tree that was never installed)."""
    return _installed("edged", "unknown")


@cache
def bindings_version() -> str:
    """llama-cpp-python's version: it pins the llama.cpp the engine runs."""
    return _installed("llama-cpp-python", "missing")


@cache
def fingerprint() -> str:
    """The build that answers, llama-server's way (`b` + build): the bindings' version, which
    pins llama.cpp, and edged's; OpenAI's `system_fingerprint` and `/props` `build_info`."""
    return f"b{bindings_version()}-edged{edged_version()}"
