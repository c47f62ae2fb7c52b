"""Architecture knowledge as data: per Hugging Face architecture, GGUF keys and tensor rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from quantize.errors import BrokenCheckpoint, UnsupportedArchitecture
from quantize.rope import head_dim, rope_theta, scaling_for

K = gguf.Keys
MT = gguf.MODEL_TENSOR
Config = Mapping[str, Any]


@dataclass(frozen=True)
class HParam:
    """One GGUF key filled from the first config.json key present (or derived from the config)."""

    key: str
    sources: tuple[str, ...] = ()
    kind: type = int
    required: bool = True
    derive: Callable[[Config], Any] | None = None

    def value(self, config: Config) -> Any:
        """The value for this key, or None when optional and absent."""
        for src in self.sources:
            if config.get(src) is not None:
                return self.kind(config[src])
        if self.derive is not None:
            derived = self.derive(config)
            if derived is not None:
                return self.kind(derived)
        if self.required:
            raise BrokenCheckpoint(
                f"config.json lacks {' or '.join(self.sources)} (needed for {self.key})"
            )
        return None


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K projection rows from HF's rotate-half layout to llama.cpp's interleaved one."""
    # Same reshaping as llama.cpp's convert_hf_to_gguf LlamaModel.permute.
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_rope: llama.cpp layout back to the Hugging Face layout."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _n_kv_heads(config: Config) -> int:
    return int(config.get("num_key_value_heads") or config["num_attention_heads"])


Transform = Callable[[np.ndarray, Config], np.ndarray]

LLAMA_TRANSFORMS: dict[MT, Transform] = {
    MT.ATTN_Q: lambda w, c: permute_rope(w, int(c["num_attention_heads"])),
    MT.ATTN_K: lambda w, c: permute_rope(w, _n_kv_heads(c)),
}

DECODER_HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.BLOCK_COUNT, ("num_hidden_layers", "n_layer")),
    HParam(K.LLM.CONTEXT_LENGTH, ("max_position_embeddings", "n_positions", "n_ctx")),
    HParam(K.LLM.EMBEDDING_LENGTH, ("hidden_size", "n_embd")),
    HParam(K.LLM.FEED_FORWARD_LENGTH, ("intermediate_size", "n_inner")),
    HParam(K.Attention.HEAD_COUNT, ("num_attention_heads", "n_head")),
    HParam(
        K.Attention.HEAD_COUNT_KV,
        ("num_key_value_heads",),
        derive=lambda c: c.get("num_attention_heads"),
    ),
    HParam(K.Rope.FREQ_BASE, kind=float, required=False, derive=rope_theta),
    HParam(K.Attention.LAYERNORM_RMS_EPS, ("rms_norm_eps",), kind=float),
    HParam(K.LLM.VOCAB_SIZE, ("vocab_size",)),
    HParam(K.Rope.DIMENSION_COUNT, derive=head_dim),
    # Only when explicit: Mistral Nemo's head_dim differs from hidden_size / num_attention_heads.
    HParam(K.Attention.KEY_LENGTH, ("head_dim",), required=False),
    HParam(K.Attention.VALUE_LENGTH, ("head_dim",), required=False),
)


def _pooling(config: Config) -> int | None:
    return config.get(
        "_edged_pooling"
    )  # filled by convert from sentence-transformers' Pooling config


BERT_HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.BLOCK_COUNT, ("num_hidden_layers",)),
    HParam(K.LLM.CONTEXT_LENGTH, ("max_position_embeddings",)),
    HParam(K.LLM.EMBEDDING_LENGTH, ("hidden_size",)),
    HParam(K.LLM.FEED_FORWARD_LENGTH, ("intermediate_size",)),
    HParam(K.Attention.HEAD_COUNT, ("num_attention_heads",)),
    HParam(K.Attention.LAYERNORM_EPS, ("layer_norm_eps",), kind=float),
    HParam(K.LLM.POOLING_TYPE, kind=int, required=False, derive=_pooling),
    HParam(K.Tokenizer.TOKEN_TYPE_COUNT, ("type_vocab_size",), required=False),
)


def _single_score(config: Config) -> None:
    """A reranker has one output (a relevance logit); a multi-label classifier is not one."""
    labels = config.get("id2label") or {}
    n = int(config.get("num_labels") or len(labels) or 1)
    if n != 1:
        raise UnsupportedArchitecture(
            f"a sequence classifier with {n} labels is not a reranker; only single-score "
            "cross-encoders (num_labels = 1) convert"
        )


@dataclass(frozen=True)
class Arch:
    """How one Hugging Face architecture becomes one GGUF architecture."""

    gguf_arch: gguf.MODEL_ARCH
    hparams: tuple[HParam, ...]
    tokenizer: str  # "bpe-or-spm" (causal LMs) or "wordpiece"
    fixed: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    strip_prefixes: tuple[str, ...] = ()
    # HF tensors that have no GGUF counterpart (buffers, heads unused at inference).
    skip_prefixes: tuple[str, ...] = ()
    skip_suffixes: tuple[str, ...] = ()
    transforms: Mapping[MT, Transform] = field(default_factory=dict)
    # Tensors llama.cpp wants in F32 whatever the output type (small, precision-critical).
    keep_f32: frozenset[MT] = frozenset()
    # config.json rope_scaling types this architecture converts (quantize.rope.SCALINGS keys).
    rope_scalings: frozenset[str] = frozenset()
    # HF tensor names (after prefix stripping) renamed to the names gguf's map knows.
    renames: Mapping[str, str] = field(default_factory=dict)
    # Raises when config.json describes a variant this table cannot convert.
    validate: Callable[[Config], None] | None = None

    @property
    def name(self) -> str:
        """The GGUF architecture name, e.g. 'llama'."""
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def kv_pairs(self, config: Config) -> dict[str, Any]:
        """The GGUF key/values derived from config.json, arch placeholder filled in."""
        out: dict[str, Any] = {}
        for hp in self.hparams:
            v = hp.value(config)
            if v is not None:
                out[hp.key.format(arch=self.name)] = v
        out.update({k.format(arch=self.name): v for k, v in self.fixed.items()})
        scaling_kvs, _ = scaling_for(config, self.rope_scalings, self.name)
        out.update({k.format(arch=self.name): v for k, v in scaling_kvs.items()})
        return out

    def generated_tensors(self, config: Config) -> dict[str, np.ndarray]:
        """Tensors computed from config.json rather than read (Llama 3.1's rope_freqs)."""
        return scaling_for(config, self.rope_scalings, self.name)[1]


LLAMA = Arch(
    gguf_arch=gguf.MODEL_ARCH.LLAMA,
    hparams=DECODER_HPARAMS,
    tokenizer="bpe-or-spm",
    skip_suffixes=(".rotary_emb.inv_freq",),
    transforms=LLAMA_TRANSFORMS,
    rope_scalings=frozenset({"linear", "llama3"}),
)

QWEN2 = Arch(
    gguf_arch=gguf.MODEL_ARCH.QWEN2,
    hparams=DECODER_HPARAMS,
    tokenizer="bpe-or-spm",
    skip_suffixes=(".rotary_emb.inv_freq",),
    rope_scalings=frozenset({"linear"}),
)

BERT = Arch(
    gguf_arch=gguf.MODEL_ARCH.BERT,
    hparams=BERT_HPARAMS,
    tokenizer="wordpiece",
    fixed={K.Attention.CAUSAL: False},
    strip_prefixes=("bert.",),
    skip_prefixes=("pooler.", "cls.predictions", "cls.seq_relationship"),
    skip_suffixes=("position_ids",),
    keep_f32=frozenset({MT.POS_EMBD, MT.TOKEN_TYPES}),
)

# A cross-encoder: BERT plus HF's classification head, tanh(pooler.dense(h[CLS])) then
# classifier, which is llama.cpp's RANK head (cls, tanh, cls.output). llama.cpp's own converter
# drops the pooler and maps classifier to cls.output alone, which scores differently from
# transformers; the pooler kept as `cls` gives transformers' score.
BERT_RERANK = Arch(
    gguf_arch=gguf.MODEL_ARCH.BERT,
    hparams=tuple(hp for hp in BERT_HPARAMS if hp.key != K.LLM.POOLING_TYPE),
    tokenizer="wordpiece",
    fixed={K.Attention.CAUSAL: False, K.LLM.POOLING_TYPE: int(gguf.PoolingType.RANK)},
    strip_prefixes=("bert.",),
    skip_prefixes=("cls.predictions", "cls.seq_relationship"),
    skip_suffixes=("position_ids",),
    keep_f32=frozenset({MT.POS_EMBD, MT.TOKEN_TYPES, MT.CLS, MT.CLS_OUT}),
    renames={
        "pooler.dense.weight": "classifier.dense.weight",
        "pooler.dense.bias": "classifier.dense.bias",
        "classifier.weight": "classifier.out_proj.weight",
        "classifier.bias": "classifier.out_proj.bias",
    },
    validate=_single_score,
)

ARCHITECTURES: dict[str, Arch] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,  # llama.cpp runs Mistral 7B as llama
    "Qwen2ForCausalLM": QWEN2,
    "BertModel": BERT,
    "BertForMaskedLM": BERT,
    "BertForSequenceClassification": BERT_RERANK,
}


def arch_for(config: Config) -> tuple[str, Arch]:
    """The (HF name, table) for a config.json, or UnsupportedArchitecture."""
    names = config.get("architectures") or []
    if not names:
        raise BrokenCheckpoint("config.json has no 'architectures' list")
    for hf_name in names:
        if hf_name in ARCHITECTURES:
            arch = ARCHITECTURES[hf_name]
            if arch.validate is not None:
                arch.validate(config)
            return hf_name, arch
    supported = ", ".join(sorted(ARCHITECTURES))
    raise UnsupportedArchitecture(
        f"architecture {names[0]!r} is not supported (supported: {supported})"
    )
