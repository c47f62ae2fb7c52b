"""`safety_model`: Llama Guard-style moderation of a conversation and of the answers to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.core.choices import Extras, Policy, submit_choices
from daemon.core.errors import translated
from daemon.core.request import Message
from daemon.core.sampling import Sampling
from daemon.core.streams import collect_all
from daemon.core.watch import leased
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import SamplingParams
from daemon.errors import ModelNotFound

log = logging.getLogger("edged.api")

# Llama Guard 3's hazard taxonomy (MLCommons), in its own wording.
CATEGORIES = (
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
)
# The verdict, and nothing else: greedy decoding under this grammar makes moderation
# deterministic and always parseable. Llama Guard itself starts its answer with newlines.
VERDICT_GBNF = r"""root ::= "\n"{0,2} ("safe" | "unsafe\n" cat ("," cat){0,13})
cat ::= "S" ([1-9] | "1" [0-4])
"""
VERDICT_MAX_TOKENS = 64
# Text only a Llama Guard chat template carries: such a template builds the task itself.
GUARD_TEMPLATE_MARK = "UNSAFE CONTENT CATEGORIES"
REFUSAL = "I can't help with that."
_GREEDY = Sampling(SamplingParams(temperature=0.0))


@dataclass(frozen=True)
class Verdict:
    """A moderation result: safe, or unsafe with the violated category codes."""

    safe: bool
    categories: tuple[str, ...] = ()

    def refusal(self) -> str:
        """The short text an unsafe turn is answered with."""
        if not self.categories:
            return REFUSAL
        names = dict(CATEGORIES)
        flagged = ", ".join(f"{c} {names.get(c, '')}".strip() for c in self.categories)
        return f"{REFUSAL} (flagged: {flagged})"


def parse_verdict(text: str) -> Verdict:
    """Read `safe` or `unsafe\\nS1,S2`; anything else counts as unsafe (fail closed)."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if lines and lines[0] == "safe":
        return Verdict(True)
    if lines and lines[0] == "unsafe":
        cats = lines[1].split(",") if len(lines) > 1 else []
        return Verdict(False, tuple(dict.fromkeys(c.strip() for c in cats if c.strip())))
    log.warning("unreadable safety verdict %r; treating it as unsafe", text)
    return Verdict(False)


def with_turn(turns: list[tuple[str, str]], role: str, text: str) -> list[tuple[str, str]]:
    """`turns` plus one more; Llama Guard expects alternating roles, so a run of one merges."""
    if turns and turns[-1][0] == role:
        return [*turns[:-1], (role, f"{turns[-1][1]}\n\n{text}")]
    return [*turns, (role, text)]


# Turns whose text the caller supplies besides the user's own: judged as user input too, since
# a system prompt or a forged tool result can carry what the user turn would be refused for.
_INSTRUCTION_ROLES = ("system", "developer", "tool")


def conversation(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """The (User|Agent, text) turns Llama Guard judges: assistant turns are the Agent's,
    everything else (user, system, developer, tool) the User's."""
    turns: list[tuple[str, str]] = []
    for m in messages:
        text = m.text()
        if text:
            turns = with_turn(turns, "Agent" if m.role == "assistant" else "User", text)
    return turns


def instructions(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """System, developer and tool text as one User turn of its own (empty when there is none).

    Llama Guard judges only the last turn of a conversation, so instructions sent earlier
    would otherwise never be judged at all.
    """
    texts = [m.text() for m in messages if m.role in _INSTRUCTION_ROLES]
    text = "\n\n".join(t for t in texts if t)
    return [("User", text)] if text else []


def guard_prompt(turns: list[tuple[str, str]]) -> str:
    """Llama Guard 3's task prompt, judging the last turn of `turns`."""
    role = turns[-1][0]
    categories = "\n".join(f"{code}: {name}." for code, name in CATEGORIES)
    convo = "\n\n".join(f"{r}: {t}" for r, t in turns)
    return (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{convo}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above "
        "conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


class Guard:
    """A loaded safety model that judges conversations."""

    def __init__(self, lm: LoadedModel, policy: Policy) -> None:
        self.lm = lm
        self.policy = policy

    @classmethod
    async def open(cls, registry: ModelRegistry, name: str, policy: Policy) -> Guard:
        """Load (or find) the named safety model; an unknown name is a 404 on `safety_model`.

        Never zero-config: the rule that lets a lone model answer any name would make it
        moderate under a name nobody chose, so only a served name (file or alias) is taken."""
        if not registry.knows(name):
            raise ModelNotFound(f"The safety model `{name}` does not exist", param="safety_model")
        try:
            lm = await leased(registry, name)
        except ModelNotFound as exc:
            raise ModelNotFound(
                f"The safety model `{name}` does not exist", param="safety_model"
            ) from exc
        return cls(lm, policy)

    def prompt(self, turns: list[tuple[str, str]]) -> str:
        """The moderation prompt as this model should see it."""
        source = self.lm.model.chat_template()
        if source and GUARD_TEMPLATE_MARK in source:
            # A real Llama Guard: its template wraps the conversation in the task itself.
            role = {"User": "user", "Agent": "assistant"}
            return self.lm.render_chat([{"role": role[r], "content": t} for r, t in turns])
        task = guard_prompt(turns)
        if source:
            return self.lm.render_chat([{"role": "user", "content": task}])
        return task

    async def judge(self, turns: list[tuple[str, str]]) -> Verdict:
        """The verdict on the last turn; a conversation with nothing to judge is safe."""
        if not turns:
            return Verdict(True)
        # The guard's own failures keep the engine's names (`prompt`): its prompt is not the
        # request's messages, whatever the dialect calls those.
        with translated():
            tokens = self.lm.tokenize(self.prompt(turns))
            extras = Extras(grammar=VERDICT_GBNF)
            handles = submit_choices(
                self.lm, [tokens], VERDICT_MAX_TOKENS, _GREEDY, 1, self.policy, extras
            )
            (result,) = await collect_all(handles)
        return parse_verdict(result.text)

    async def check_input(self, messages: Sequence[Message]) -> Verdict:
        """Judge the conversation as sent, and its instructions on their own, before generating."""
        verdicts = await asyncio.gather(
            self.judge(conversation(messages)), self.judge(instructions(messages))
        )
        if all(v.safe for v in verdicts):
            return Verdict(True)
        cats = (c for v in verdicts for c in v.categories)
        return Verdict(False, tuple(dict.fromkeys(cats)))

    async def check_outputs(self, messages: Sequence[Message], answers: list[str]) -> list[Verdict]:
        """Judge each answer as the Agent's reply to the conversation, concurrently."""
        turns = conversation(messages)
        return list(
            await asyncio.gather(*(self.judge(with_turn(turns, "Agent", a)) for a in answers))
        )


def answer_text(message: dict[str, Any]) -> str:
    """What an answer says, tool calls included, for the output check."""
    parts = [message.get("content") or ""]
    for c in message.get("tool_calls") or []:
        parts.append(f"{c['function']['name']}({c['function']['arguments']})")
    return "\n".join(p for p in parts if p)
