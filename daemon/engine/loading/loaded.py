"""A model ready to serve: weights, chat template, tokenizer helpers and its scheduler."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2

from daemon.engine.adapters.lora import Adapters, AdapterSet, AdapterSpec
from daemon.engine.caches.cache import SequenceStore
from daemon.engine.caches.prompt_cache import PromptCache
from daemon.engine.decode.scheduler import Scheduler
from daemon.engine.embed.embeddings import Embedder, embedding_pooling, is_reranker
from daemon.engine.errors import (
    ContextOverflow,
    EngineError,
    InvalidInput,
    LoadFailed,
    ModelUnavailable,
    NotGenerative,
)
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.chat_template import Builtin, BuiltinTemplate, ChatTemplate
from daemon.engine.loading.fit import (
    DeviceMemory,
    Offload,
    local_devices,
    model_shape,
    plan_for,
)
from daemon.engine.loading.identity import file_identity
from daemon.engine.loading.options import DecodeMode, EngineOptions, projector_options
from daemon.engine.media import MediaEncoder, MediaPrompt, Medium
from daemon.engine.native.llama import (
    ContextOptions,
    Model,
    Pooling,
    grammar_is_valid,
)
from daemon.engine.native.mtmd import Projector
from daemon.engine.speculation.drafting import SpecOptions, check_draft_vocab
from daemon.engine.types import CacheType, GenerationRequest

log = logging.getLogger("edged.engine")
_GRAMMARS_KEPT = 256  # verdicts kept per model (each a dict entry, text as key)


def gpu_plan(path: Path, options: EngineOptions, devices: list[DeviceMemory]) -> Offload:
    """The GPU fit of the model at `path` under these options, on these devices."""
    return plan_for(
        path,
        devices,
        options.ctx_size,
        options.parallel,
        may_shrink=options.fit_kv,
        ubatch=options.ubatch_size,
        cache_types=(options.cache_type_k, options.cache_type_v),
    )


def chat_template(
    model: Model, name: str = "", override: str | Builtin | None = None
) -> ChatTemplate:
    """The model's own chat template, or ChatML when it has none or an unusable one; an
    operator's `override` (--chat-template-file's text, or --chat-template's built-in name)
    replaces it, and one that does not compile fails the load."""
    bos, eos = model.special_text(model.bos), model.special_text(model.eos)
    if isinstance(override, Builtin):
        return BuiltinTemplate(override.name)
    if override is not None:
        try:
            return ChatTemplate(override, bos_token=bos, eos_token=eos)
        except jinja2.TemplateError as exc:
            raise LoadFailed(f"{name}: its --chat-template-file does not compile ({exc})") from exc
    try:
        return ChatTemplate(model.chat_template(), bos_token=bos, eos_token=eos)
    except jinja2.TemplateError as exc:
        log.warning("%s: unusable chat template (%s); using ChatML", name, exc)
        return ChatTemplate(None)


def prompt_tokens(model: Model, text: str) -> list[int]:
    """Prompt text to tokens, with BOS added once where the model wants it."""
    tokens = model.tokenize(text, add_special=model.add_bos, parse_special=True)
    # A rendered template may already start with BOS text; never feed two.
    if len(tokens) >= 2 and tokens[0] == tokens[1] == model.bos:
        tokens = tokens[1:]
    return tokens


class LoadedModel:
    """One GGUF loaded with its own context and scheduler thread."""

    def __init__(
        self,
        name: str,
        path: Path,
        options: EngineOptions,
        store: SequenceStore | None = None,
        adapters: tuple[AdapterSpec, ...] = (),
        projector: Path | None = None,
        template: str | Builtin | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.loaded_at = time.time()
        self.closed = False
        # What kept state is keyed by besides the name: the file's content (sha256), so a
        # model replaced under the same name never resumes state of the old weights.
        self.identity = file_identity(path)
        # The request_id store outlives this object (the registry owns it across unloads).
        self.store = store if store is not None else SequenceStore(options.store_max_bytes)
        options = self._fit(options)
        self.model = Model(path, options.model)
        self.adapters: Adapters | None = None
        self.draft: Model | None = None
        # The vision projector (--mmproj, or mmproj-<stem>.gguf beside the model): it belongs
        # to this model and is freed before it.
        self.media: MediaEncoder | None = None
        # The most rows one decode computes at once (the scheduler's batch, llama.cpp's
        # micro-batch): an image the text model attends to as a whole must fit in them.
        self.whole_rows = min(max(options.batch_size, options.parallel), options.ubatch_size)
        # Grammars llama.cpp has judged for this vocabulary (a tool set's call grammar comes
        # back with every request that offers those tools).
        self._grammars: OrderedDict[str, bool] = OrderedDict()
        self._grammars_lock = threading.Lock()
        try:
            if adapters:  # LoRA adapters belong to this model and die with it
                self.adapters = Adapters(self.model, adapters)
            if projector is not None:
                proj = Projector(self.model, projector, projector_options(options))
                self.media = MediaEncoder(proj, identity=file_identity(projector))
            self.template = chat_template(self.model, name, template)
            self._start(options)
        except BaseException:  # a context that cannot be created must not leak the weights
            if self.media is not None:
                self.media.close()
            if self.adapters is not None:
                self.adapters.close()
            if self.draft is not None:
                self.draft.close()
            self.model.close()
            raise

    def _fit(self, options: EngineOptions) -> EngineOptions:
        """Resolve `n_gpu_layers` auto to what fits the devices' free memory now (the models
        already loaded have taken theirs), and flash attention auto to on where layers run
        on a GPU."""
        layers = options.model.n_gpu_layers
        if layers is not None:
            n = model_shape(self.path).n_layers if layers else 0
            self.offload = Offload(layers, n, options.ctx_size, options.parallel, 0, reason="set")
            return options
        devices = (options.devices or local_devices)()
        if not devices:
            self.offload = Offload(0, 0, options.ctx_size, options.parallel, 0, reason="no GPU")
            return replace(options, model=replace(options.model, n_gpu_layers=0))
        plan = gpu_plan(self.path, options, devices)
        self.offload = plan
        log.info(
            "%s: %s layers on %s (%s; ~%d MiB of device memory)",
            self.name,
            "all" if plan.layers < 0 else plan.layers,
            ", ".join(d.name for d in devices),
            plan.reason,
            plan.gpu_bytes >> 20,
        )
        return replace(
            options,
            ctx_size=min(options.ctx_size, plan.ctx_size),  # smaller only where it shrank
            parallel=plan.parallel,
            batch_size=max(options.batch_size, plan.parallel),
            flash_attn=options.flash_attn
            if options.flash_attn is not None or not plan.offloaded
            else True,
            model=replace(options.model, n_gpu_layers=plan.layers),
        )

    def _start(self, options: EngineOptions) -> None:
        name = self.name
        train = self.model.n_ctx_train
        self.ctx_size = min(options.ctx_size, train) if train > 0 else options.ctx_size
        self.kv_types: tuple[CacheType, CacheType] = (options.cache_type_k, options.cache_type_v)
        self.embedder: Embedder | None = None
        self.scheduler: Scheduler | None = None
        # Encoders keep no KV and reuse nothing: bit-exact by construction.
        self.mode = DecodeMode(True, options.flash_attn is not False, "off: encoder")
        # A cross-encoder (RANK pooling): the same packing worker, scores instead of vectors.
        self.ranker: Embedder | None = None
        if self.adapters is not None and (
            is_reranker(self.model) or embedding_pooling(self.model) is not None
        ):
            raise LoadFailed(f"{name}: LoRA adapters are served on generation models only")
        if is_reranker(self.model):
            self.ranker = Embedder.for_model(self.model, Pooling.RANK, self.ctx_size, options, name)
            return
        pooling = embedding_pooling(self.model)
        if pooling is not None:
            # An embedding model (BERT & co.) gets an Embedder and no generation scheduler.
            self.embedder = Embedder.for_model(self.model, pooling, self.ctx_size, options, name)
            return
        spec = self._speculation(options)
        self.scheduler = Scheduler(
            self.model,
            ContextOptions(
                n_ctx=self.ctx_size * options.parallel,
                # At least one row per slot: every decoding sequence fits each step.
                n_batch=max(options.batch_size, options.parallel),
                n_ubatch=options.ubatch_size,
                n_seq_max=options.parallel,
                n_threads=options.threads,
                n_threads_batch=options.threads_batch or options.threads,
                flash_attn=options.flash_attn is True,
                type_k=options.cache_type_k,
                type_v=options.cache_type_v,
            ),
            max_queue=options.max_queue,
            name=name,
            max_per_owner=options.max_per_key,
            adapters=self.adapters,
            speculation=spec,
            prompt_cache=PromptCache(
                options.cache_ram,
                spill_dir=options.cache_dir,
                spill_max_bytes=options.cache_dir_max_bytes,
                share_tokens=options.cache_share_tokens,
                exact=options.exact,
                name=name,
                identity=self.identity,
            ),
            identity=self.identity,
        )
        self.mode = DecodeMode(
            options.exact,
            options.flash_attn is True,
            self._spec_mode(spec),
            self.scheduler.memory.describe(swa_full=True),
        )

    def _spec_mode(self, spec: SpecOptions) -> str:
        """What speculation this model's scheduler does, or why none."""
        if not spec.enabled:
            return "off"
        assert self.scheduler is not None
        if not self.scheduler.spec.usable:
            why = self.scheduler.spec.off_reason
            if why == "recurrent":
                return "off: recurrent state (rejected drafts cannot be removed from it)"
            return f"off: {why} (--exact needs bit-identical rows)"
        kinds = ["ngram"] if spec.ngram else []
        if self.scheduler.spec.draft_ctx is not None:
            kinds.append("draft")
        return "+".join(kinds) or "off"

    def _speculation(self, options: EngineOptions) -> SpecOptions:
        """Speculation settings of this model; a draft of another vocabulary is refused."""
        if options.draft_model is not None and options.draft_model.resolve() != self.path.resolve():
            draft = Model(options.draft_model, options.model)
            try:
                check_draft_vocab(self.model, draft)
            except LoadFailed as exc:
                draft.close()
                log.warning("%s: no speculation with this draft: %s", self.name, exc)
            else:
                self.draft = draft
        return SpecOptions(
            ngram=options.speculate,
            draft=self.draft,
            draft_max=options.draft_max,
            always=options.speculate_always,
            inexact=not options.exact,
        )

    def render_chat(
        self, messages: list[dict[str, Any]], *, generation_prompt: bool = True, **extra: Any
    ) -> str:
        """The conversation as the model's template lays it out, ending in the assistant turn
        (without `generation_prompt`: ending where the last message ends)."""
        return self.template.render(messages, add_generation_prompt=generation_prompt, **extra)

    def _check_open(self) -> None:
        if self.closed:
            raise ModelUnavailable(f"`{self.name}` was unloaded; retry", retry_after=1)

    def tokenize(self, text: str) -> list[int]:
        """Prompt text to tokens, with BOS added once where the model wants it."""
        self._check_open()
        return prompt_tokens(self.model, text)

    @property
    def vision(self) -> bool:
        """Whether the model sees images (a projector with vision was loaded with it)."""
        return self.media is not None and self.media.projector.vision

    @property
    def hears(self) -> bool:
        """Whether the model hears audio (a projector with an audio encoder was loaded)."""
        return self.media is not None and self.media.projector.audio

    def media_prompt(
        self,
        text: str,
        media: list[Medium],
        max_pixels: int | None = None,
        owner: str = "",
        max_seconds: float | None = None,
    ) -> tuple[list[int], MediaPrompt]:
        """A rendered prompt holding one media marker per image or audio clip, as tokens
        (stand-ins at media positions) and media embeddings. Blocks (decoding, encoding):
        off the loop."""
        self._check_open()
        if any(m.kind == "image" for m in media) and not self.vision:
            raise InvalidInput(
                f"`{self.name}` does not take images (no vision projector, --mmproj)",
                subject="image",
            )
        if any(m.kind == "audio" for m in media) and not self.hears:
            why = "its projector has no audio encoder" if self.media else "no projector, --mmproj"
            raise InvalidInput(f"`{self.name}` does not take audio ({why})", subject="audio")
        if self.media is None:  # no media at all, and no projector to tokenize with
            raise InvalidInput(f"`{self.name}` has no projector (--mmproj)", subject="image")
        bos = self.model.special_text(self.model.bos) if self.model.add_bos else ""
        add_special = self.model.add_bos and not (bos and text.startswith(bos))
        return self.media.prompt(
            text,
            media,
            add_special=add_special,
            max_pixels=max_pixels,
            max_seconds=max_seconds,
            owner=owner,
            whole_rows=self.whole_rows,
        )

    def check_tokens(self, tokens: list[int], param: str = "prompt") -> None:
        """Reject token ids the vocabulary does not have, and empty prompts (`param`: the
        caller's name for this input)."""
        if not tokens:
            raise InvalidInput("the prompt is empty", subject=param)
        n_vocab = self.model.n_vocab
        if any(not 0 <= t < n_vocab for t in tokens):
            raise InvalidInput(f"token ids must be in [0, {n_vocab})", subject=param)

    def fit(self, prompt_tokens: list[int], max_tokens: int | None) -> int:
        """Resolve max_tokens against the context; never truncate silently."""
        room = self.ctx_size - len(prompt_tokens)
        if max_tokens is None:
            if room <= 0:
                raise ContextOverflow(
                    f"the prompt has {len(prompt_tokens)} tokens; this model's context is "
                    f"{self.ctx_size}",
                    subject="prompt",
                )
            return room
        if max_tokens > room:
            raise ContextOverflow(
                f"prompt ({len(prompt_tokens)} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"this model's context of {self.ctx_size} tokens",
                subject="max_tokens",
            )
        return max_tokens

    def generator(self) -> Scheduler:
        """The generation scheduler; a 400 for an embedding-only model."""
        self._check_open()
        if self.scheduler is None:
            kind = "a reranker" if self.ranker is not None else "an embedding model"
            raise NotGenerative(
                f"`{self.name}` is {kind}; it cannot generate text", subject="model"
            )
        return self.scheduler

    @property
    def worker(self) -> Scheduler | Embedder:
        """The thread serving this model (slots, queue, liveness): scheduler or embedder."""
        worker = self.scheduler or self.embedder or self.ranker
        assert worker is not None
        return worker

    @property
    def static_bytes(self) -> int:
        """Weights (the vision projector's included) plus the KV cache allocated for every
        slot: fixed while it is loaded."""
        worker = self.scheduler or self.embedder or self.ranker
        slots = worker.n_slots if worker is not None else 1
        kv = self.model.kv_bytes(self.ctx_size * slots, *self.kv_types)
        return self.model.size_bytes + kv + self.projector_bytes

    @property
    def projector_bytes(self) -> int:
        """The vision projector's weights (its file; the encoder's work buffers are small)."""
        return self.media.projector.size_bytes if self.media is not None else 0

    @property
    def host_bytes(self) -> int:
        """The part of `static_bytes` in system memory: what runs on GPUs is counted per
        device by the fit (`offload.per_device`) and bounded by each device's own memory."""
        return max(self.static_bytes - self.offload.gpu_bytes, 0)

    @property
    def cache_bytes(self) -> int:
        """Memory its prompt cache and its image embedding cache hold now."""
        prompts = self.scheduler.cache.nbytes if self.scheduler is not None else 0
        return prompts + (self.media.cache.bytes if self.media is not None else 0)

    @property
    def memory_bytes(self) -> int:
        """Weights, KV and prompt cache (an estimate for the memory cap)."""
        return self.static_bytes + self.cache_bytes

    def limit_cache(self, limit: int | None) -> None:
        """Bound its prompt cache's memory below the configured size (None: lift it)."""
        if self.scheduler is not None:
            self.scheduler.cache.set_limit(limit)

    def grammar_ok(self, gbnf: str) -> bool:
        """Whether llama.cpp accepts this GBNF grammar for the model's vocabulary."""
        self._check_open()
        with self._grammars_lock:  # chats with media build their prompt off the loop
            known = self._grammars.get(gbnf)
            if known is not None:
                self._grammars.move_to_end(gbnf)
                return known
        known = grammar_is_valid(self.model, gbnf)
        with self._grammars_lock:
            self._grammars[gbnf] = known
            if len(self._grammars) > _GRAMMARS_KEPT:
                self._grammars.popitem(last=False)
        return known

    @property
    def adapter_names(self) -> list[str]:
        """This model's LoRA adapters in `--lora` order (llama-server's ids index it)."""
        return self.adapters.names if self.adapters is not None else []

    def adapter_set(self, wanted: list[tuple[str, float | None]]) -> AdapterSet:
        """A request's adapters resolved against this model's (InvalidInput for unknown)."""
        if not wanted:
            return ()
        if self.adapters is None:
            raise InvalidInput(f"`{self.name}` has no LoRA adapters (--lora)", subject="lora")
        return self.adapters.resolve(wanted)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation on this model's scheduler."""
        return self.generator().submit(request)

    def abandon(self, error: EngineError, timeout: float = 10.0) -> bool:
        """Give the model up without freeing its llama.cpp objects (they live on a lost RPC
        worker): its scheduler stops and ends its requests with `error` (see
        `Scheduler.retire`), and its prompt cache lets go of its memory and spill files.
        False when the scheduler thread was parked inside llama.cpp. Blocks: call it off
        the event loop."""
        self.closed = True
        stopped = True
        if self.scheduler is not None:
            stopped = self.scheduler.retire(error, timeout)
            # Bounded: a thread parked inside llama.cpp may hold the cache's lock for good.
            self.scheduler.cache.clear(timeout)
        for encoder in (self.embedder, self.ranker):  # queued inputs are answered 503
            if encoder is not None:
                stopped = encoder.stop(timeout) and stopped
        return stopped

    def close(self) -> None:
        """Stop the scheduler (or embedder), waiting for its running decode, then free the
        model. Calls after this are refused (503) instead of reaching freed memory."""
        self.closed = True
        stopped = True
        if self.scheduler is not None:
            stopped = self.scheduler.close()
        if self.embedder is not None:
            stopped = self.embedder.close() and stopped
        if self.ranker is not None:
            stopped = self.ranker.close() and stopped
        if stopped:
            if self.media is not None:  # the projector holds the model: freed before it
                self.media.close()
            if self.adapters is not None:  # before the model: llama.cpp frees them with it
                self.adapters.close()
            self.model.close()
            if self.draft is not None:
                self.draft.close()
        else:  # pragma: no cover - close waits without a timeout
            log.error("%s: the worker did not stop; its model is not freed", self.name)
