"""Plain values that cross the engine boundary: what to generate and what came out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

from daemon.engine.positions import Jumps

if TYPE_CHECKING:
    from daemon.engine.media import MediaPrompt

# Element types llama.cpp can store its KV cache in (llama-server's --cache-type-k/-v set).
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]


class FinishReason(str, Enum):
    """Why a sequence stopped generating."""

    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; validated at the API edge, trusted here."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None
    # Tokens that start the grammar: with any, it is lazy and constrains nothing until the
    # model samples one of them (a family's call marker under tool_choice auto).
    grammar_triggers: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        """Temperature 0 means: always take the most likely token."""
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        """Whether any repetition penalty changes the logits."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


@dataclass(frozen=True)
class SavedSequence:
    """What a continuation needs: the tokens whose KV `state` holds, and tokens still to feed."""

    tokens: tuple[int, ...]
    pending: tuple[int, ...]
    n_prompt: int
    state: bytes | None
    finished: bool = False
    exact: int = 0
    # Bytes of a UTF-8 character the last call generated only partly: the next call's text
    # starts with them instead of a U+FFFD at the boundary.
    tail: bytes = b""
    # The LoRA adapter set its KV was computed under: only a request with the same set
    # may continue it.
    lora: tuple[tuple[str, float], ...] = ()
    # The identity of the model file whose weights computed its KV (LoadedModel.identity):
    # a model replaced under the same name never continues it.
    model_id: str = ""
    # M-RoPE images among `tokens` (see daemon.engine.positions): where its cells sit.
    jumps: Jumps = ()

    @property
    def nbytes(self) -> int:
        """Bytes this entry costs in memory."""
        n = len(self.state) if self.state else 0
        return n + 8 * (len(self.tokens) + len(self.pending)) + len(self.tail)


@dataclass(frozen=True)
class BeamParams:
    """Beam search settings (Hugging Face semantics)."""

    num_beams: int
    length_penalty: float = 1.0
    do_sample: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, already tokenized, and how to continue it.

    With `resume`, the prompt is ignored and a kept sequence continues; with `keep`, the
    finished sequence is handed back on the handle (`handle.saved`) for a later resume.
    """

    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    beams: BeamParams | None = None
    resume: SavedSequence | None = None
    keep: bool = False
    logprobs: int | None = None
    prompt_logprobs: bool = False
    # n > 1: the choices of one prompt share a fork group; the prompt is prefilled once
    # and its KV copied to the other choices' slots.
    fork_group: int | None = None
    fork_size: int = 1
    # Who asked (the API key's identity, "" without auth): admission is fair between owners.
    owner: str = ""
    # The owner's own cap on requests running at once (its key file line); None: the model's.
    owner_limit: int | None = None
    # LoRA adapters (sorted (name, scale) pairs, see daemon.engine.adapters.lora): decoded only in
    # steps that apply exactly this set; its KV is reused only by requests with this set.
    lora: tuple[tuple[str, float], ...] = ()
    # Images of the prompt: their embeddings, decoded where prompt_tokens holds stand-ins
    # (negative ids, see daemon.engine.media).
    media: MediaPrompt | None = None
    # Report the prompt's progress (Chunk.progress) when it takes its slot and after each of
    # its chunks is decoded (llama-server's `return_progress`).
    progress: bool = False
    # `logprobs` after sampling (llama-server's `post_sampling_probs`): the chosen token and
    # its alternatives among the candidates the sampler chain kept, under its settings.
    post_sampling: bool = False

    @property
    def n_slots(self) -> int:
        """Sequence slots this request occupies."""
        return self.beams.num_beams if self.beams else 1


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model's raw distribution, and the top alternatives.

    Log-probabilities are taken from the logits before logit_bias, penalties, grammar and
    temperature, so they describe the model, not the sampler settings; a request asking for
    them after sampling (`post_sampling`) gets the distribution its token was drawn from.
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Chunk:
    """Newly generated text of one sequence; `finish_reason` is set on its last chunk.

    `logprobs` covers the tokens generated since the previous chunk; `prompt_logprobs` (first
    chunk only, when asked) scores the prompt: entry i is the log-probability of prompt token
    i + 1 given the tokens before it.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    # How far the prompt is in, for a request that asked (`progress`); the latest report.
    progress: PromptProgress | None = None


@dataclass(frozen=True)
class PromptProgress:
    """A prompt's progress as llama-server's `prompt_progress` reports it: of `total` prompt
    tokens, `cache` came from a slot or the prompt cache and `processed` are in the KV now
    (`cache` included), `time_ms` after the request took its slot."""

    total: int
    cache: int
    processed: int
    time_ms: float

    def wire(self) -> dict[str, int | float]:
        """The JSON object llama-server sends."""
        return {
            "total": self.total,
            "cache": self.cache,
            "processed": self.processed,
            "time_ms": self.time_ms,
        }


@dataclass
class Usage:
    """Token counts of one finished request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens, as OpenAI reports them."""
        return self.prompt_tokens + self.completion_tokens
