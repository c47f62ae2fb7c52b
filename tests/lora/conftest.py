"""Random adapters for the embedded SmolLM2, converted by edged-quantize, and servers with them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from daemon.config import embedded_model_path
from quantize.lora import convert_lora
from tests.conftest import Server, start_server, stop_server, wait_healthy
from tests.lora.peft import random_peft

MODEL = embedded_model_path().stem


def smollm_config(path: Path) -> dict[str, object]:
    """The config.json a Hugging Face copy of the GGUF would have (what convert-lora reads)."""
    reader = gguf.GGUFReader(path)

    def kv(key: str) -> int | float:
        return reader.fields[f"llama.{key}"].contents()  # type: ignore[return-value]

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": kv("embedding_length"),
        "intermediate_size": kv("feed_forward_length"),
        "num_hidden_layers": kv("block_count"),
        "num_attention_heads": kv("attention.head_count"),
        "num_key_value_heads": kv("attention.head_count_kv"),
        "max_position_embeddings": kv("context_length"),
        "rms_norm_eps": kv("attention.layer_norm_rms_epsilon"),
        "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
    }


@pytest.fixture(scope="session")
def smollm_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random adapters of SmolLM2 (`a` on attention, `b` on the MLP), as GGUFs."""
    root = tmp_path_factory.mktemp("smollm_lora")
    base = root / "base"
    base.mkdir()
    cfg = smollm_config(embedded_model_path())
    (base / "config.json").write_text(json.dumps(cfg))
    out = {}
    for name, targets, seed in (
        ("a", ("q_proj", "k_proj", "v_proj", "o_proj"), 1),
        ("b", ("gate_proj", "up_proj", "down_proj"), 2),
    ):
        peft = random_peft(root / name, cfg, targets=targets, strength=0.3, seed=seed)
        out[name] = convert_lora(peft, root / f"{name}.gguf", base, "f16", progress=False)
    return out


def lora_server(tmp: Path, adapters: dict[str, Path], *args: str) -> Server:
    """A daemon serving SmolLM2 with adapter `a` (scale 1) and `b` (default scale 0.5)."""
    server = start_server(
        tmp,
        "--strict-model-names",
        "--ctx-size",
        "512",
        "--threads",
        "1",
        "--lora",
        f"a={adapters['a']}",
        "--lora",
        f"b={adapters['b']}:0.5",
        *args,
        wait=False,
    )
    try:
        wait_healthy(server, 600)  # a loaded shared CI machine starts Python slowly
    except BaseException:
        stop_server(server)
        raise
    return server


@pytest.fixture(scope="module")
def server4(
    smollm_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = lora_server(tmp_path_factory.mktemp("lora4"), smollm_adapters, "--parallel", "4")
    yield srv
    stop_server(srv)
