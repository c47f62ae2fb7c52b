"""`edged run MODEL [PROMPT]`: chat with a model of the running daemon, streamed.

With a PROMPT (or text on stdin) it answers once; otherwise it is an interactive chat:
multi-line input between \"\"\" lines, /set to change sampling, /clear, /bye.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from daemon.cli import duration
from daemon.cli.client import (
    NoDaemon,
    add_daemon_flags,
    client,
    error_text,
    fail,
    no_daemon_message,
    request,
)

# /set NAME VALUE: what each sampling field parses as.
SAMPLING: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "max_tokens": int,
    "seed": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "repetition_penalty": float,
}
HELP = """Available commands:
  /set temperature 0.7   set a sampling parameter ({names})
  /set system <text>     set the system message
  /set                   show the settings
  /clear                 forget the conversation
  /bye                   exit (Ctrl-D too)
  /?, /help              this help
Use \"\"\" to begin and end a multi-line message. Ctrl-C stops an answer."""


@dataclass
class Chat:
    """One conversation with its sampling settings."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return {
            "model": self.model,
            "messages": msgs + self.messages,
            "stream": True,
            **self.options,
        }


def stream_answer(http: httpx.Client, chat: Chat) -> Iterator[str]:
    """The answer's text pieces as they arrive; RuntimeError with the daemon's message on error."""
    with http.stream("POST", "/v1/chat/completions", json=chat.body(), timeout=None) as resp:
        if resp.status_code != 200:
            resp.read()
            raise RuntimeError(error_text(resp))
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(error_text(httpx.Response(500, json=event)))
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    yield piece


def answer(http: httpx.Client, chat: Chat, out: Any = sys.stdout) -> bool:
    """Stream one answer to `out` and keep it in the conversation; False on an error."""
    parts: list[str] = []
    try:
        for piece in stream_answer(http, chat):
            parts.append(piece)
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n[stopped]")
    except RuntimeError as exc:
        print(f"\nedged: {exc}", file=sys.stderr)
        chat.messages.pop()  # the question goes unanswered: do not keep it
        return False
    except httpx.HTTPError as exc:
        print(f"\nedged: the connection to the daemon failed: {exc}", file=sys.stderr)
        chat.messages.pop()
        return False
    out.write("\n")
    chat.messages.append({"role": "assistant", "content": "".join(parts)})
    return True


def _set(chat: Chat, rest: str) -> None:
    name, _, value = rest.strip().partition(" ")
    if not name:
        print(f"model: {chat.model}\nsystem: {chat.system or '(none)'}")
        for k, v in chat.options.items():
            print(f"{k}: {v}")
        return
    if name == "system":
        chat.system = value.strip() or None
        print("Set system message.")
        return
    if name not in SAMPLING:
        print(f"Unknown parameter {name!r}; one of: system, {', '.join(SAMPLING)}")
        return
    try:
        chat.options[name] = SAMPLING[name](value.strip())
    except ValueError:
        print(f"{name} wants a {SAMPLING[name].__name__}, not {value.strip()!r}")
        return
    print(f"Set parameter '{name}' to '{chat.options[name]}'")


def _read_message(first: str) -> str | None:
    """A message: one line, or a \"\"\"-delimited block (None if input ended inside it)."""
    if not first.startswith('"""'):
        return first
    body = first[3:]
    if body.endswith('"""') and len(body) >= 3:
        return body[:-3]
    lines = [body] if body else []
    while True:
        try:
            line = input("... ")
        except EOFError:
            return None
        if line.endswith('"""'):
            lines.append(line[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(line)


def interactive(http: httpx.Client, chat: Chat) -> int:
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    print(f"Chatting with {chat.model} (/? for help, /bye to leave)")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit"):
            return 0
        if text in ("/?", "/help"):
            print(HELP.format(names=", ".join(SAMPLING)))
            continue
        if text == "/clear":
            chat.messages.clear()
            print("Cleared session context")
            continue
        if text == "/set" or text.startswith("/set "):
            _set(chat, text[4:])
            continue
        if text.startswith("/") and not text.startswith('"""'):
            print(f"Unknown command {text.split()[0]!r}. Type /? for help")
            continue
        message = _read_message(line)
        if message is None:
            print()
            return 0
        chat.messages.append({"role": "user", "content": message})
        answer(http, chat)


def cmd_run(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("temperature", "top_p", "max_tokens", "seed")
        if getattr(args, k) is not None
    }
    if args.keep_alive is not None:
        options["keep_alive"] = args.keep_alive
    chat = Chat(args.model, args.system, options)
    with client(args, timeout=30) as http:
        try:
            found = request(http, "GET", f"/v1/models/{args.model}")
        except NoDaemon:
            return fail(no_daemon_message(str(http.base_url)))
        if found.status_code == 404:
            return fail(
                f"edged: the daemon at {http.base_url} does not serve {args.model!r}. "
                "See `curl .../v1/models`, `edged list`, or get it with `edged pull`."
            )
        if found.status_code != 200:
            return fail(f"edged: {error_text(found)}")
        prompt = " ".join(args.prompt)
        if not sys.stdin.isatty():
            piped = sys.stdin.read()
            prompt = f"{prompt}\n\n{piped}".strip() if prompt else piped.strip()
        elif not prompt:
            return interactive(http, chat)
        if not prompt:
            return fail("edged: an empty prompt")
        chat.messages.append({"role": "user", "content": prompt})
        return 0 if answer(http, chat) else 1


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="chat with a model of the running daemon")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*", help="answer this once and exit (stdin is read too)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", dest="top_p", type=float, default=None)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--keep-alive", type=duration, default=None, help="keep the model loaded (300, 5m, 1h)"
    )
    add_daemon_flags(p)
    p.set_defaults(func=cmd_run)
