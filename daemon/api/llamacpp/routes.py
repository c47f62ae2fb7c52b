"""Routes of llama-server's own API, and the OpenAI routes without their `/v1` prefix."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from daemon.api.auth import ADMIN, Caller
from daemon.api.llamacpp import serving
from daemon.api.llamacpp.errors import SHAPE
from daemon.api.llamacpp.protocol import ApplyTemplateRequest, CompletionRequest, InfillRequest
from daemon.api.messages import core_message
from daemon.config import Settings
from daemon.core import tools
from daemon.core.choices import policy_of
from daemon.core.families import family_of
from daemon.core.prompt import render
from daemon.core.reasoning import template_vars
from daemon.core.request import MEDIA_MARKER, ChatRequest
from daemon.core.watch import leased
from daemon.engine.loading.registry import ModelRegistry
from daemon.version import fingerprint

log = logging.getLogger("edged.api")

Body = dict[str, Any]


@post("/completion", status_code=200)
async def completion(
    data: JSONBody[CompletionRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Any:
    """Raw completion of text or token prompts; SSE `data:` events when `stream` is true."""
    return await serving.complete(registry, data, policy_of(settings))


@post("/infill", status_code=200)
async def infill(
    data: JSONBody[InfillRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Any:
    """Fill-in-the-middle between `input_prefix` and `input_suffix`."""
    return await serving.infill(registry, data, policy_of(settings))


@post("/apply-template", status_code=200)
async def apply_template(
    data: JSONBody[ApplyTemplateRequest], registry: NamedDependency[ModelRegistry]
) -> Body:
    """The conversation rendered by the model's chat template, ready for /completion."""
    lm = await leased(registry, data.model)
    req = ChatRequest(
        messages=tuple(core_message(m) for m in data.messages),
        continue_final=data.continue_final_message,
        generation_prompt=data.add_generation_prompt,
    )
    messages, extra = tools.prompt_messages(req.messages, None, lm.template.source)
    extra |= template_vars(data.chat_template_kwargs, data.reasoning_effort, lm.template.source)
    return {"prompt": render(lm, req, messages, extra)}


@get("/props")
async def props(
    registry: NamedDependency[ModelRegistry],
    caller: NamedDependency[Caller],
    settings: NamedDependency[Settings],
    model: str | None = None,
) -> Body:
    """The model's context, slots, template and special tokens: the default model's, or
    `?model=NAME`'s as llama-server's router answers (`model_path` is the file name unless
    the caller is an admin)."""
    lm = await leased(registry, model)
    m = lm.model
    return {
        "default_generation_settings": {
            "id": 0,
            "n_ctx": lm.ctx_size,
            "params": serving.settings_of(
                lm, CompletionRequest(prompt=""), policy_of(settings).seed
            ),
        },
        "total_slots": lm.worker.n_slots,
        "model_alias": lm.name,
        "model_path": str(lm.path) if caller.admin else lm.path.name,
        "chat_template": lm.template.source,
        # edged's own: the template's family, its call syntax and reasoning markers.
        "chat_family": family_of(lm.template.source).wire(),
        "bos_token": m.special_text(m.bos),
        "eos_token": m.special_text(m.eos),
        "modalities": {"vision": lm.vision, "video": False, "audio": lm.hears},
        # What stands for a file in a prompt_string: llama-server's is random per process
        # (LLAMA_MEDIA_MARKER pins it), edged's is libmtmd's default, always the same.
        "media_marker": MEDIA_MARKER,
        "infill": m.fim.usable,
        # edged's own: bit-exact reuse (--exact) or the fast default, and what it runs.
        "decoding": lm.mode.as_dict(),
        "build_info": fingerprint(),
    }


@get("/slots", opt={"scope": ADMIN})
async def slots(registry: NamedDependency[ModelRegistry]) -> list[Body]:
    """Each sequence slot of the default model: whether it is busy and the tokens it holds.

    Admins only: how many tokens other keys' slots hold tells one key about another's work."""
    lm = await leased(registry, None)
    sched = lm.generator()
    return [
        {
            "id": seq,
            "id_task": -1,
            "n_ctx": lm.ctx_size,
            "speculative": False,
            "is_processing": busy,
            "n_cached": held,
        }
        for seq, busy, held in sched.slot_states()
    ]


@get("/lora-adapters")
async def lora_adapters(
    registry: NamedDependency[ModelRegistry], caller: NamedDependency[Caller]
) -> list[Body]:
    """The default model's LoRA adapters: `id` is what /completion's `lora` entries name.

    `scale` is the default a request gets by naming the adapter; unlike llama-server, none
    applies to a request that does not name it."""
    lm = await leased(registry, None)
    specs = lm.adapters.specs if lm.adapters is not None else {}
    return [
        {
            "id": i,
            "name": s.name,
            "path": str(s.path) if caller.admin else s.path.name,
            "scale": s.scale,
        }
        for i, s in enumerate(specs.values())
    ]


router = Router(
    path="/",
    route_handlers=[completion, infill, apply_template, props, slots, lora_adapters],
    exception_handlers=SHAPE.handlers(),
)
