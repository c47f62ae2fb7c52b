"""llama.cpp's built-in chat templates (`chatml`, `llama3`, `command-r`, ...): the fixed
formats its `llama_chat_apply_template` writes by name, which llama-server's
`--chat-template NAME` selects for a model whose GGUF carries no usable template."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from functools import cache

from daemon.engine.native.llama import init_backend, lc


@cache
def builtin_names() -> tuple[str, ...]:
    """The names llama.cpp knows, in its order."""
    init_backend()
    n = lc.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * max(n, 1))()
    n = lc.llama_chat_builtin_templates(names, n)
    return tuple(bytes(names[i]).decode("utf-8") for i in range(n))


def render_builtin(name: str, messages: Sequence[tuple[str, str]], add_assistant: bool) -> str:
    """`messages` ((role, text) pairs) in the built-in format `name`, opening the assistant's
    turn when `add_assistant`. A role the format cannot write is a ValueError."""
    encoded = [(role.encode("utf-8"), text.encode("utf-8")) for role, text in messages]
    chat = (lc.llama_chat_message * max(len(encoded), 1))()
    for i, (role, text) in enumerate(encoded):
        chat[i].role = role
        chat[i].content = text
    # The recommended first size is twice the characters; the call says when it needs more.
    size = 2 * sum(len(r) + len(t) for r, t in encoded) + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = lc.llama_chat_apply_template(
            name.encode("utf-8"), chat, len(encoded), add_assistant, buf, size
        )
        if n < 0:
            raise ValueError(f"the built-in template {name!r} cannot write this conversation")
        if n <= size:
            return buf.raw[:n].decode("utf-8", "replace")
        size = n
    raise ValueError(f"the built-in template {name!r} gave no stable length")
