"""The only module that imports llama.cpp: thin owners of model, context, batch and adapters.

The other native/ modules take the bindings from here (`lc`, `mtmd`): samplers and
grammars in sampler.py, ggml's RPC backend in ggml_rpc.py.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import llama_cpp as lc
import numpy as np

try:  # libmtmd (images and audio, for native/ modules); builds may leave it out
    # (-DLLAVA_BUILD=off, as .ci/run builds the RPC wheel)
    from llama_cpp import mtmd_cpp as mtmd
except (ImportError, OSError):  # the binding raises FileNotFoundError for a missing library
    mtmd = None
from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: F401 (for native/sampler.py)

from daemon.engine.errors import LoadFailed
from daemon.engine.native.logs import log_callback
from daemon.engine.native.structs import checked
from daemon.engine.types import CacheType

log = logging.getLogger("edged.llama")

_init_lock = threading.Lock()
_initialized = False
_log_callback = log_callback(log)


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log into `logging`."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lc.llama_backend_init()
        _initialized = True


def system_info() -> str:
    """llama.cpp's own line of the CPU features its kernels use (`AVX2 = 1 | ...`)."""
    init_backend()
    return bytes(lc.llama_print_system_info()).decode("utf-8", "replace")


def cpu_has_amx() -> bool:
    """Whether the CPU advertises AMX tiles (Linux only; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return " amx_tile" in f.read()
    except OSError:
        return False


@dataclass(frozen=True)
class ModelOptions:
    """How to place a model's weights."""

    n_gpu_layers: int | None = 0  # None: fitted to free device memory at load (engine/fit.py)
    main_gpu: int = 0
    tensor_split: tuple[float, ...] | None = None
    use_mmap: bool = True
    # llama.cpp's extra CPU buffer types (AMX, weight repacking). None = auto: off on AMX
    # CPUs, where the AMX kernels of 0.3.36 crash in llama_decode under virtualisation.
    extra_buffers: bool | None = None
    # ggml_backend_dev_t pointers to offload to (RPC workers, then local GPUs); None lets
    # llama.cpp take every device it knows.
    devices: tuple[int, ...] | None = None

    def use_extra_buffers(self) -> bool:
        """The resolved `extra_buffers` choice."""
        return self.extra_buffers if self.extra_buffers is not None else not cpu_has_amx()


class Pooling(IntEnum):
    """How an embedding context pools token vectors into one per sequence."""

    UNSPECIFIED = lc.LLAMA_POOLING_TYPE_UNSPECIFIED
    NONE = lc.LLAMA_POOLING_TYPE_NONE
    MEAN = lc.LLAMA_POOLING_TYPE_MEAN
    CLS = lc.LLAMA_POOLING_TYPE_CLS
    LAST = lc.LLAMA_POOLING_TYPE_LAST
    RANK = lc.LLAMA_POOLING_TYPE_RANK


# CacheType -> (ggml type id, bytes per element): ggml's block sizes over block lengths.
CACHE_TYPES: dict[str, tuple[int, float]] = {
    "f32": (lc.GGML_TYPE_F32, 4.0),
    "f16": (lc.GGML_TYPE_F16, 2.0),
    "bf16": (30, 2.0),  # GGML_TYPE_BF16; the 0.3.36 bindings do not name it
    "q8_0": (lc.GGML_TYPE_Q8_0, 34 / 32),
    "q4_0": (lc.GGML_TYPE_Q4_0, 18 / 32),
    "q4_1": (lc.GGML_TYPE_Q4_1, 20 / 32),
    "iq4_nl": (lc.GGML_TYPE_IQ4_NL, 18 / 32),
    "q5_0": (lc.GGML_TYPE_Q5_0, 22 / 32),
    "q5_1": (lc.GGML_TYPE_Q5_1, 24 / 32),
}


@dataclass(frozen=True)
class ContextOptions:
    """Shape of a context: sizes, threads, sequence count."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    flash_attn: bool = False
    type_k: CacheType = "f16"
    type_v: CacheType = "f16"
    # Sliding-window layers keep every position (llama.cpp's default in these bindings),
    # not only the window: a slot's prefix stays resumable after the window has slid.
    swa_full: bool = True
    embeddings: bool = False
    # UNSPECIFIED lets llama.cpp take the pooling the GGUF declares.
    pooling: Pooling = Pooling.UNSPECIFIED


@dataclass(frozen=True)
class FimTokens:
    """A vocabulary's fill-in-the-middle token ids (-1 where it has none)."""

    pre: int = -1
    suf: int = -1
    mid: int = -1
    rep: int = -1
    sep: int = -1

    @property
    def usable(self) -> bool:
        """Whether prefix, suffix and middle markers all exist."""
        return min(self.pre, self.suf, self.mid) >= 0


class Model:
    """A loaded GGUF: weights, vocabulary and metadata."""

    def __init__(self, path: Path, options: ModelOptions = ModelOptions()) -> None:
        init_backend()
        params = lc.llama_model_default_params()
        layers = options.n_gpu_layers or 0  # auto is resolved before a model loads
        params.n_gpu_layers = 2**31 - 1 if layers < 0 else layers
        params.main_gpu = options.main_gpu
        # 0.3.36's llama_model_params has no use_mmap (a ctypes attribute of that name would
        # be set and ignored): load_mode replaced it. AUTO maps on the CPU; NONE reads.
        if not options.use_mmap:
            params.load_mode = lc.LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = options.use_extra_buffers()
        if options.tensor_split:
            self._split = (ctypes.c_float * len(options.tensor_split))(*options.tensor_split)
            params.tensor_split = self._split
        if options.devices:
            self._devices = (ctypes.c_void_p * (len(options.devices) + 1))(*options.devices, None)
            params.devices = ctypes.addressof(self._devices)
        if not path.is_file():
            raise LoadFailed(f"model file not found: {path.name}")  # no host paths to clients
        ptr = lc.llama_model_load_from_file(str(path).encode(), checked(params))
        if not ptr:
            raise LoadFailed(f"llama.cpp could not load {path.name}")
        self.ptr = ptr
        self.path = path
        self.vocab = lc.llama_model_get_vocab(ptr)
        self.n_vocab: int = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = lc.llama_model_n_ctx_train(ptr)
        self.n_embd: int = lc.llama_model_n_embd(ptr)
        self.bos: int = lc.llama_vocab_bos(self.vocab)
        self.eos: int = lc.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(lc.llama_vocab_get_add_bos(self.vocab))
        # What llama-server's rerank input layout consults ([BOS] q [EOS] [SEP] d [EOS]).
        self.add_eos: bool = bool(lc.llama_vocab_get_add_eos(self.vocab))
        self.add_sep: bool = bool(lc.llama_vocab_get_add_sep(self.vocab))
        self.sep: int = lc.llama_vocab_sep(self.vocab)
        self.n_cls_out: int = lc.llama_model_n_cls_out(ptr)
        self.size_bytes: int = lc.llama_model_size(ptr)
        self.n_layer: int = lc.llama_model_n_layer(ptr)
        self.n_head: int = lc.llama_model_n_head(ptr)
        self.n_head_kv: int = lc.llama_model_n_head_kv(ptr)
        # What the memory keeps per sequence (caches/memory.py): the sliding window (0:
        # none), a recurrent state (Mamba, RWKV) alone or beside attention.
        self.n_swa: int = lc.llama_model_n_swa(ptr)
        self.recurrent: bool = bool(lc.llama_model_is_recurrent(ptr))
        self.hybrid: bool = bool(lc.llama_model_is_hybrid(ptr))
        # Fill-in-the-middle tokens from the GGUF (tokenizer.ggml.fim_*_token_id); -1 = none.
        self.fim = FimTokens(
            pre=lc.llama_vocab_fim_pre(self.vocab),
            suf=lc.llama_vocab_fim_suf(self.vocab),
            mid=lc.llama_vocab_fim_mid(self.vocab),
            rep=lc.llama_vocab_fim_rep(self.vocab),
            sep=lc.llama_vocab_fim_sep(self.vocab),
        )
        vocab = self.vocab
        self._eog = frozenset(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(vocab, t))
        # One table lookup per generated token instead of a foreign call.
        self._pieces = [self._token_to_piece(t, special=False) for t in range(self.n_vocab)]

    def _token_to_piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def kv_bytes(self, n_cells: int, type_k: CacheType = "f16", type_v: CacheType = "f16") -> int:
        """Bytes of a KV cache holding `n_cells` tokens with these element types."""
        per_layer = self.n_embd // max(self.n_head, 1) * self.n_head_kv
        per_cell = per_layer * (CACHE_TYPES[type_k][1] + CACHE_TYPES[type_v][1])
        return int(n_cells * self.n_layer * per_cell)

    def piece(self, token: int) -> bytes:
        """Bytes of one token as text (special tokens render empty)."""
        return self._pieces[token]

    def special_piece(self, token: int) -> bytes:
        """Bytes of one token, control tokens rendered as their text."""
        return self._token_to_piece(token, special=True)

    def special_text(self, token: int) -> str:
        """Text of a token including control tokens such as `<s>`."""
        if token < 0:
            return ""
        return self._token_to_piece(token, special=True).decode("utf-8", "replace")

    @property
    def eog_tokens(self) -> frozenset[int]:
        """Every end-of-generation token id."""
        return self._eog

    def is_eog(self, token: int) -> bool:
        """End-of-generation tokens (EOS, EOT, im_end ...)."""
        return token in self._eog

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Text to token ids; `add_special` adds BOS where the model wants one."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def control_token(self, text: str) -> int | None:
        """The id of the one special token spelled `text` (a family's marker such as
        `[TOOL_CALLS]`), or None where the vocabulary writes it as ordinary text."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        if len(ids) != 1 or self.tokenize(text, add_special=False, parse_special=False) == ids:
            return None
        return ids[0]

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """Token ids back to text."""
        if special:
            data = b"".join(self._token_to_piece(t, special=True) for t in tokens)
        else:
            data = b"".join(self._pieces[t] for t in tokens)
        return data.decode("utf-8", "replace")

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None."""
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def chat_template(self) -> str | None:
        """The model's default chat template from its metadata."""
        raw = lc.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", "replace") if raw else None

    def named_template(self, name: str) -> str | None:
        """A named template from the metadata (e.g. a reranker's "rerank" prompt), or None."""
        raw = lc.llama_model_chat_template(self.ptr, name.encode())
        return raw.decode("utf-8", "replace") if raw else None

    def close(self) -> None:
        """Free the weights."""
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


class Adapter:
    """A LoRA adapter GGUF loaded against one model (freed with it, or by `close`)."""

    def __init__(self, model: Model, path: Path) -> None:
        if not path.is_file():
            raise LoadFailed(f"adapter file not found: {path.name}")
        ptr = lc.llama_adapter_lora_init(model.ptr, str(path).encode())
        if not ptr:
            raise LoadFailed(
                f"llama.cpp could not load the adapter {path.name} for {model.path.name} "
                "(another architecture, other shapes, or not a LoRA GGUF)"
            )
        self.ptr = ptr
        self.path = path

    def meta(self, key: str) -> str | None:
        """An adapter GGUF metadata value as a string, or None."""
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_adapter_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def close(self) -> None:
        """Free the adapter (before its model)."""
        if self.ptr:
            lc.llama_adapter_lora_free(self.ptr)
            self.ptr = None


class Context:
    """A llama_context: the KV memory and compute state of up to `n_seq_max` sequences."""

    def __init__(self, model: Model, options: ContextOptions) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = options.n_ctx
        params.n_batch = options.n_batch
        params.n_ubatch = min(options.n_ubatch, options.n_batch)
        params.n_seq_max = options.n_seq_max
        params.n_threads = options.n_threads
        params.n_threads_batch = options.n_threads_batch
        params.embeddings = options.embeddings
        params.pooling_type = options.pooling
        # One KV stream per sequence: attention cost and cell layout of a sequence do not
        # depend on its neighbours, so batched output equals output computed alone.
        params.kv_unified = False
        params.swa_full = options.swa_full
        params.type_k = CACHE_TYPES[options.type_k][0]
        params.type_v = CACHE_TYPES[options.type_v][0]
        params.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if options.flash_attn
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        ptr = lc.llama_init_from_model(model.ptr, checked(params))
        if not ptr:
            raise LoadFailed(f"could not create a context for {model.path.name}")
        self.ptr = ptr
        self.model = model
        self.n_ctx: int = lc.llama_n_ctx(ptr)
        # Rows llama.cpp computes at once: a bidirectional image must fit in them whole.
        self.n_ubatch: int = lc.llama_n_ubatch(ptr)
        # None for encoder-only models (BERT): they keep no KV memory between decodes.
        self.mem = lc.llama_get_memory(ptr)
        self.pooling = Pooling(lc.llama_pooling_type(ptr))

    def set_adapters(self, adapters: list[tuple[Adapter, float]]) -> None:
        """Apply these adapters at these scales to every following decode ([] = none).

        llama.cpp keeps one adapter set per context, not per sequence (0.3.36 binds
        llama_set_adapters_lora; the single-adapter llama_set_adapter_lora is a deprecated
        wrapper of it, and there is no llama_clear_adapter_lora: n = 0 clears)."""
        n = len(adapters)
        ptrs = (lc.llama_adapter_lora_p_ctypes * max(n, 1))(*(a.ptr for a, _ in adapters))
        scales = (ctypes.c_float * max(n, 1))(*(s for _, s in adapters))
        rc = lc.llama_set_adapters_lora(self.ptr, ptrs, n, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora returned {rc}")

    def decode(self, batch: Batch) -> int:
        """Run the model on a batch: 0 ok, 1 no KV room, < 0 error."""
        return lc.llama_decode(self.ptr, batch.raw)

    def logits(self, row: int) -> ctypes.Array[ctypes.c_float]:
        """Logits of a batch row that asked for them (valid until the next decode)."""
        ptr = lc.llama_get_logits_ith(self.ptr, row)
        return ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float * self.model.n_vocab)).contents

    def logits_np(self, row: int) -> np.ndarray:
        """Logits of a batch row as a float32 numpy view (valid until the next decode)."""
        ptr = lc.llama_get_logits_ith(self.ptr, row)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def state_get(self, seq: int) -> bytes:
        """Serialized KV state of one sequence."""
        size = lc.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        n = lc.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return bytes(memoryview(buf)[:n])

    def state_set(self, seq: int, data: bytes) -> bool:
        """Load a serialized sequence state into `seq`; False when llama.cpp refuses it."""
        # llama.cpp only reads the buffer: point it at the bytes instead of copying them
        # (prompt cache restores are tens of MB).
        buf = ctypes.cast(data, ctypes.POINTER(ctypes.c_uint8))
        return lc.llama_state_seq_set_data(self.ptr, buf, len(data), seq) != 0

    def embeddings_seq(self, seq: int) -> np.ndarray | None:
        """A copy of the pooled embedding of a sequence after a decode, or None without pooling."""
        ptr = lc.llama_get_embeddings_seq(self.ptr, seq)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,)).copy()

    def rank_seq(self, seq: int) -> np.ndarray | None:
        """A copy of a sequence's classifier outputs after a decode with RANK pooling."""
        # RANK fills n_cls_out floats per sequence, not n_embd: read no further.
        ptr = lc.llama_get_embeddings_seq(self.ptr, seq)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(max(self.model.n_cls_out, 1),)).copy()

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Forget positions [p0, p1) of a sequence (-1 = open end); False where the memory
        cannot (a recurrent state is never cut back part of the way)."""
        return bool(lc.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_pos_min(self, seq: int) -> int:
        """The oldest position the memory holds of a sequence (-1: empty); above 0 where a
        sliding window left older cells behind or a recurrent state holds only its last."""
        return lc.llama_memory_seq_pos_min(self.mem, seq)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Share positions of `src` with `dst` (no copy in a unified cache)."""
        lc.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def clear(self) -> None:
        """Drop every sequence."""
        if self.mem:
            lc.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        """Free the context."""
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch; rows are appended then decoded together."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.raw = lc.llama_batch_init(capacity, 0, n_seq_max)
        self.capacity = capacity
        self._token = self.raw.token
        self._pos = self.raw.pos
        self._n_seq = self.raw.n_seq_id
        self._seq = self.raw.seq_id
        self._logits = self.raw.logits
        self.n_tokens = 0

    def clear(self) -> None:
        """Empty the batch for the next step."""
        self.n_tokens = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one row; returns its index."""
        i = self.n_tokens
        if i >= self.capacity:  # llama_batch_init arrays end here: never write past them
            raise IndexError(f"the batch holds at most {self.capacity} tokens")
        self._token[i] = token
        self._pos[i] = pos
        self._n_seq[i] = 1
        self._seq[i][0] = seq
        self._logits[i] = logits
        self.n_tokens = i + 1
        self.raw.n_tokens = i + 1
        return i

    def close(self) -> None:
        """Free the batch arrays."""
        if self.raw is not None:
            lc.llama_batch_free(self.raw)
            self.raw = None


def grammar_is_valid(model: Model, gbnf: str) -> bool:
    """Whether llama.cpp parses `gbnf` (with a `root` rule) for this vocabulary."""
    ptr = lc.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    if not ptr:
        return False
    lc.llama_sampler_free(ptr)
    return True
