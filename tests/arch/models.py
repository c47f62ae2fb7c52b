"""Tiny random-weight GGUFs of the architecture classes whose memory is not a plain KV cache:
sliding-window attention (Gemma 2), recurrent state (Mamba 2), hybrid attention and short
convolutions (LFM2) and mixture of experts (Qwen3 MoE), written with gguf-py around the
embedded SmolLM2's tokenizer.

Architecture knowledge is data here: per class, its hyperparameters and a table of tensor
shapes (numpy order, the reverse of ggml's `ne`), named by gguf-py's own tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from tests.conftest import gguf_reader

T = gguf.MODEL_TENSOR
HIDDEN = 64
N_HEAD, N_HEAD_KV, HEAD_DIM = 4, 2, 16
N_FF = 128
CTX_TRAIN = 4096
# Gemma 2's window: longer than a prompt-cache block (64), so a prompt inside it can be
# cached too; prompts of a few hundred tokens reach past it.
WINDOW = 80
# Mamba 2's SSM: inner size = heads x head dim; one group.
SSM_INNER, SSM_STATE, SSM_HEADS, SSM_CONV = 128, 16, 4, 4
LFM2_LAYERS = 4
# Qwen3 MoE: 4 experts, 2 used per token.
N_EXPERT, N_EXPERT_USED, N_FF_EXP = 4, 2, 32

Shape = tuple[int, ...]
# (tensor kind, name suffix or None, numpy shape, how its values are drawn)
Row = tuple[T, str | None, Shape, str]


@dataclass(frozen=True)
class Arch:
    """One architecture class: gguf-py's architecture, its keys and its per-layer tensors."""

    name: str  # gguf-py's architecture name (general.architecture)
    arch: gguf.MODEL_ARCH
    n_layer: int
    keys: Callable[[gguf.GGUFWriter], None]
    layer: Callable[[int], list[Row]]  # block index -> its tensors
    tied: bool  # the output matrix is the token embedding
    output_norm: T = T.OUTPUT_NORM


def _attention(norms: bool) -> list[Row]:
    rows: list[Row] = [
        (T.ATTN_NORM, "weight", (HIDDEN,), "norm"),
        (T.ATTN_Q, "weight", (N_HEAD * HEAD_DIM, HIDDEN), "mat"),
        (T.ATTN_K, "weight", (N_HEAD_KV * HEAD_DIM, HIDDEN), "mat"),
        (T.ATTN_V, "weight", (N_HEAD_KV * HEAD_DIM, HIDDEN), "mat"),
        (T.ATTN_OUT, "weight", (HIDDEN, N_HEAD * HEAD_DIM), "mat"),
        (T.FFN_NORM, "weight", (HIDDEN,), "norm"),
    ]
    if norms:
        rows += [
            (T.ATTN_Q_NORM, "weight", (HEAD_DIM,), "norm"),
            (T.ATTN_K_NORM, "weight", (HEAD_DIM,), "norm"),
        ]
    return rows


def _dense_ffn() -> list[Row]:
    return [
        (T.FFN_GATE, "weight", (N_FF, HIDDEN), "mat"),
        (T.FFN_UP, "weight", (N_FF, HIDDEN), "mat"),
        (T.FFN_DOWN, "weight", (HIDDEN, N_FF), "mat"),
    ]


def _attention_keys(w: gguf.GGUFWriter) -> None:
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_feed_forward_length(N_FF)
    w.add_rope_freq_base(10000.0)


def _gemma2_keys(w: gguf.GGUFWriter) -> None:
    _attention_keys(w)
    w.add_sliding_window(WINDOW)
    w.add_attn_logit_softcapping(50.0)
    w.add_final_logit_softcapping(30.0)


def _mamba2_keys(w: gguf.GGUFWriter) -> None:
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_ssm_conv_kernel(SSM_CONV)
    w.add_ssm_inner_size(SSM_INNER)
    w.add_ssm_state_size(SSM_STATE)
    w.add_ssm_time_step_rank(SSM_HEADS)
    w.add_ssm_group_count(1)


def _qwen3moe_keys(w: gguf.GGUFWriter) -> None:
    _attention_keys(w)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)


def _lfm2_keys(w: gguf.GGUFWriter) -> None:
    _attention_keys(w)
    w.add_head_count_kv([0 if _lfm2_conv(i) else N_HEAD_KV for i in range(LFM2_LAYERS)])
    w.add_shortconv_l_cache(3)


def _lfm2_conv(bid: int) -> bool:
    """LFM2's blocks: short convolutions, with attention in every other one."""
    return bid % 2 == 0


def _lfm2_layer(bid: int) -> list[Row]:
    if _lfm2_conv(bid):
        mixer: list[Row] = [
            (T.ATTN_NORM, "weight", (HIDDEN,), "norm"),
            (T.SHORTCONV_CONV, "weight", (HIDDEN, 3), "conv"),
            (T.SHORTCONV_INPROJ, "weight", (3 * HIDDEN, HIDDEN), "mat"),
            (T.SHORTCONV_OUTPROJ, "weight", (HIDDEN, HIDDEN), "mat"),
            (T.FFN_NORM, "weight", (HIDDEN,), "norm"),
        ]
    else:
        mixer = _attention(norms=True)
    return mixer + _dense_ffn()


_CONV_DIM = SSM_INNER + 2 * SSM_STATE

ARCHS: dict[str, Arch] = {
    "gemma2": Arch(
        "gemma2",
        gguf.MODEL_ARCH.GEMMA2,
        4,  # layers alternate: sliding window, global
        _gemma2_keys,
        lambda _: [
            *_attention(norms=False),
            *_dense_ffn(),
            (T.ATTN_POST_NORM, "weight", (HIDDEN,), "post"),
            (T.FFN_POST_NORM, "weight", (HIDDEN,), "post"),
        ],
        tied=True,
    ),
    "mamba2": Arch(
        "mamba2",
        gguf.MODEL_ARCH.MAMBA2,
        2,
        _mamba2_keys,
        lambda _: [
            (T.ATTN_NORM, "weight", (HIDDEN,), "norm"),
            (T.SSM_IN, "weight", (SSM_INNER + _CONV_DIM + SSM_HEADS, HIDDEN), "mat"),
            (T.SSM_CONV1D, "weight", (_CONV_DIM, SSM_CONV), "conv"),
            (T.SSM_CONV1D, "bias", (_CONV_DIM,), "bias"),
            (T.SSM_DT, "bias", (SSM_HEADS,), "bias"),
            (T.SSM_A, None, (SSM_HEADS, 1), "decay"),
            (T.SSM_D, None, (SSM_HEADS, 1), "norm"),
            (T.SSM_NORM, "weight", (1, SSM_INNER), "norm"),
            (T.SSM_OUT, "weight", (HIDDEN, SSM_INNER), "mat"),
        ],
        tied=False,
    ),
    "qwen3moe": Arch(
        "qwen3moe",
        gguf.MODEL_ARCH.QWEN3MOE,
        2,
        _qwen3moe_keys,
        lambda _: [
            *_attention(norms=True),
            (T.FFN_GATE_INP, "weight", (N_EXPERT, HIDDEN), "mat"),
            (T.FFN_GATE_EXP, "weight", (N_EXPERT, N_FF_EXP, HIDDEN), "mat"),
            (T.FFN_UP_EXP, "weight", (N_EXPERT, N_FF_EXP, HIDDEN), "mat"),
            (T.FFN_DOWN_EXP, "weight", (N_EXPERT, HIDDEN, N_FF_EXP), "mat"),
        ],
        tied=False,
    ),
    "lfm2": Arch(
        "lfm2",
        gguf.MODEL_ARCH.LFM2,
        LFM2_LAYERS,
        _lfm2_keys,
        _lfm2_layer,
        tied=True,
        output_norm=T.TOKEN_EMBD_NORM,
    ),
}


def _values(rng: np.random.Generator, shape: Shape, kind: str) -> np.ndarray:
    """Values that keep activations O(1), so logits differ clearly between tokens."""
    if kind == "mat":
        x = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif kind == "norm":
        x = 1.0 + 0.1 * rng.standard_normal(shape)
    elif kind == "post":  # Gemma's block outputs outweigh the (tied) input embedding, or
        # every greedy step would repeat its input token
        x = 4.0 + 0.5 * rng.standard_normal(shape)
    elif kind == "conv":
        x = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif kind == "decay":  # A = -exp(A_log): a state that forgets at several rates
        x = -np.exp(rng.uniform(-1.0, 1.0, shape))
    else:  # "bias"
        x = 0.1 * rng.standard_normal(shape)
    return x.astype(np.float32)


def _tensor_name(kind: T, bid: int | None, suffix: str | None) -> str:
    name = gguf.TENSOR_NAMES[kind].format(bid=bid)
    return f"{name}.{suffix}" if suffix else name


def _copy_tokenizer(w: gguf.GGUFWriter, source: Path) -> int:
    """Every `tokenizer.*` key of `source` (vocabulary, merges, specials, chat template);
    returns the vocabulary size."""
    reader = gguf_reader(source)
    n_vocab = 0
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = f.contents()
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
        if key == "tokenizer.ggml.tokens":
            n_vocab = len(value)
    return n_vocab


def write_model(kind: str, out: Path, tokenizer_gguf: Path, seed: int = 0) -> Path:
    """Write the tiny `kind` model (a key of ARCHS) to `out` and return it."""
    a = ARCHS[kind]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(out, a.name)
    w.add_name(f"tiny-{kind}")
    w.add_context_length(CTX_TRAIN)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(a.n_layer)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    a.keys(w)
    n_vocab = _copy_tokenizer(w, tokenizer_gguf)
    embd = rng.standard_normal((n_vocab, HIDDEN)).astype(np.float32)
    if a.tied:  # a tied head: rows of norm ~1 (Gemma scales its input by sqrt(HIDDEN))
        # keep the input from outweighing every block, or greedy steps repeat their input
        embd /= np.sqrt(HIDDEN)
    # Control tokens (SmolLM2's first 17 ids: <|im_end|> among them) hardly ever win a
    # greedy step, so generations run their whole length instead of stopping at random.
    embd[:17] *= 0.01
    tensors: list[tuple[str, np.ndarray]] = [(_tensor_name(T.TOKEN_EMBD, None, "weight"), embd)]
    for bid in range(a.n_layer):
        for t, suffix, shape, how in a.layer(bid):
            tensors.append((_tensor_name(t, bid, suffix), _values(rng, shape, how)))
    tensors.append((_tensor_name(a.output_norm, None, "weight"), _values(rng, (HIDDEN,), "norm")))
    if not a.tied:
        out_w = _values(rng, (n_vocab, HIDDEN), "mat") * 4.0
        out_w[:17] *= 0.01
        tensors.append((_tensor_name(T.OUTPUT, None, "weight"), out_w))
    for name, data in tensors:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
