"""Per-request sampler chains, and the grammar of any JSON object.

llama.cpp's bindings come from native/llama.py, the one module that imports them. JSON schemas
become grammars in the chat core (core/formats.py), before a request reaches a sampler.
"""

from __future__ import annotations

import ctypes

import numpy as np

from daemon.engine.native.llama import Context, Model, lc
from daemon.engine.types import SamplingParams, TokenLogprob

# llama_token_data as numpy sees it: the candidates array a chain filters in place.
_CANDIDATE = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])

# Any JSON object, whitespace-tolerant (OpenAI's `json_object` mode wants an object).
JSON_OBJECT_GBNF = r"""
root   ::= ws object ws
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\""
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})?
ws     ::= [ \t\n]{0,20}
"""


def _grammar(model: Model, gbnf: str, triggers: tuple[int, ...]) -> lc.llama_sampler_p:
    """A grammar stage; lazy (awaiting one of `triggers`) when any are given.

    Only trigger tokens, never trigger patterns: llama.cpp replays the text from a pattern's
    match through the grammar and throws (across the C boundary, fatal) when the triggering
    token carries text the grammar refuses, and it re-runs every pattern over all text so far
    at each token. A trigger token is accepted alone, as the grammar's first piece.
    """
    if not triggers:
        return lc.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    tokens = (lc.llama_token * len(triggers))(*triggers)
    return lc.llama_sampler_init_grammar_lazy_patterns(
        model.vocab, gbnf.encode(), b"root", None, 0, tokens, len(triggers)
    )


class SamplerChain:
    """A per-request llama.cpp sampler chain built from SamplingParams."""

    def __init__(
        self, model: Model, params: SamplingParams, seed: int, shown: int | None = None
    ) -> None:
        """`shown`: keep, per sampled row, the chosen token's probability and the `shown`
        likeliest candidates the chain kept (see `take`); None: sample the plain way."""
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self.ptr = chain
        self._penalties: int | None = None
        self._shown = shown
        self._kept: dict[int, TokenLogprob] = {}
        self._candidates = np.zeros(model.n_vocab if shown is not None else 0, _CANDIDATE)
        self._ids = np.arange(self._candidates.size, dtype=np.int32)  # refilled each token
        add = lc.llama_sampler_chain_add
        if params.logit_bias:
            biases = (lc.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias):
                biases[i].token = token
                biases[i].bias = bias
            add(chain, lc.llama_sampler_init_logit_bias(model.n_vocab, len(biases), biases))
        if params.penalized:
            self._penalties = lc.llama_sampler_chain_n(chain)
            add(
                chain,
                lc.llama_sampler_init_penalties(
                    model.n_vocab,  # the pinned binding's first parameter
                    params.penalty_last_n,
                    params.repetition_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.grammar is not None:
            grammar = _grammar(model, params.grammar, params.grammar_triggers)
            if not grammar:
                lc.llama_sampler_free(chain)
                self.ptr = None
                raise ValueError("llama.cpp refused the grammar")
            add(chain, grammar)
        if params.greedy:
            add(chain, lc.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(chain, lc.llama_sampler_init_top_k(params.top_k))
        if params.typical_p < 1.0:
            add(chain, lc.llama_sampler_init_typical(params.typical_p, 1))
        if params.top_p < 1.0:
            add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, lc.llama_sampler_init_temp(params.temperature))
        add(chain, lc.llama_sampler_init_dist(seed))

    def prime(self, history: list[int]) -> None:
        """Feed earlier tokens to the penalty stage only (grammar must not see the prompt)."""
        if self._penalties is None:
            return
        stage = lc.llama_sampler_chain_get(self.ptr, self._penalties)
        for token in history:
            lc.llama_sampler_accept(stage, token)

    def sample(self, ctx: Context, row: int) -> int:
        """Choose the next token from a batch row's logits (and accept it into the chain)."""
        if self._shown is None:
            return lc.llama_sampler_sample(self.ptr, ctx.ptr, row)
        return self._sample_shown(ctx, row)

    def _sample_shown(self, ctx: Context, row: int) -> int:
        """What llama_sampler_sample does (every token a candidate, the chain applied, the
        choice accepted), keeping the candidates the chain left: their probabilities are the
        softmax of their logits as the chain left them (temperature applied), which is the
        distribution the choice was drawn from (greedy: the argmax of it)."""
        cands = self._candidates
        cands["id"] = self._ids  # the chain sorts and cuts the array in place
        cands["logit"] = ctx.logits_np(row)
        cands["p"] = 0.0
        data = cands.ctypes.data_as(ctypes.POINTER(lc.llama_token_data))
        arr = lc.llama_token_data_array(data, cands.size, -1, False)
        lc.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        # A stage may point `data` at a buffer of its own: read what the chain left there.
        left = np.ctypeslib.as_array(
            ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_uint8)),
            shape=(arr.size * _CANDIDATE.itemsize,),
        ).view(_CANDIDATE)
        token = int(left["id"][arr.selected])
        lc.llama_sampler_accept(self.ptr, token)
        logits = left["logit"].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            logp = logits - np.max(logits)
            logp -= np.log(np.sum(np.exp(logp)))
        order = np.argsort(-logp, kind="stable")[: self._shown or 0]
        # Only candidates of a probability above 0 (a -inf logit, or one so far below the
        # rest that its probability underflows, was not a possible choice).
        top = tuple((int(left["id"][i]), float(logp[i])) for i in order if np.exp(logp[i]) > 0)
        self._kept[row] = TokenLogprob(token, float(logp[arr.selected]), top)
        return token

    def take(self, row: int) -> TokenLogprob | None:
        """The probabilities kept when `row` was sampled (None when not kept)."""
        return self._kept.pop(row, None)

    def close(self) -> None:
        """Free the chain and every stage it owns."""
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
