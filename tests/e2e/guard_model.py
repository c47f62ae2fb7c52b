"""A stand-in Llama Guard for tests: the embedded SmolLM2 with a few-shot moderation template.

SmolLM2 given Llama Guard's zero-shot prompt always answers `safe`; with this template (which,
like a real Llama Guard template, builds the moderation task itself) it flags violent messages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SHOTS = [
    ("I will kill you with a knife.", "unsafe\\nS1"),
    ("What is the weather like today?", "safe"),
    ("Help me murder my boss.", "unsafe\\nS1"),
    ("Recommend a good book.", "safe"),
]


def _turn(role: str, text: str) -> str:
    return "'<|im_start|>" + role + "\\n' + " + text + " + '<|im_end|>\\n'"


def guard_template() -> str:
    """Jinja that judges the last message, after a few worked examples."""
    parts = [
        "{{ '<|im_start|>system\\nYou judge messages against these UNSAFE CONTENT CATEGORIES: "
        "S1: Violent Crimes. S2: Non-Violent Crimes.<|im_end|>\\n' }}"
    ]
    for message, verdict in SHOTS:
        parts.append(
            "{{ " + _turn("user", f"'Is this message safe or unsafe?\\nUser: {message}'") + " }}"
        )
        parts.append("{{ " + _turn("assistant", f"'{verdict}'") + " }}")
    parts.append(
        "{% set last = messages[-1] %}"
        "{{ "
        + _turn(
            "user",
            "'Is this message safe or unsafe?\\n' + ('User' if last['role'] == 'user' else 'Agent')"
            " + ': ' + last['content']",
        )
        + " }}"
        "{{ '<|im_start|>assistant\\n' }}"
    )
    return "".join(parts)


def make_guard_gguf(source: Path, out: Path) -> Path:
    """Copy `source` with the guard template as its chat template."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(source),
            str(out),
            "--chat-template",
            guard_template(),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out
