"""The tuning flags map onto Settings and the engine options, and bad combinations fail early."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import get_args

import pytest
from pydantic import ValidationError

from daemon.__main__ import _parser, settings_from_args
from daemon.app import engine_options
from daemon.config import Settings, default_threads
from daemon.engine.native.llama import CACHE_TYPES
from daemon.engine.types import CacheType


def parse(*argv: str) -> Settings:
    return settings_from_args(_parser().parse_args(["serve", *argv]))


def test_every_cache_type_has_a_ggml_type() -> None:
    assert set(get_args(CacheType)) == set(CACHE_TYPES)


def test_tuning_flags_reach_the_engine() -> None:
    s = parse(
        *("--threads", "3", "--threads-batch", "5", "--batch-size", "256"),
        *("--ubatch-size", "128", "--parallel", "4", "--cache-type-k", "q8_0"),
    )
    e = engine_options(s)
    assert (e.threads, e.threads_batch, e.batch_size, e.ubatch_size, e.parallel) == (
        3,
        5,
        256,
        128,
        4,
    )
    assert (e.cache_type_k, e.cache_type_v) == ("q8_0", "f16")


def test_quantized_value_cache_needs_flash_attention() -> None:
    for off in (("--no-flash-attn",), ("--exact",)):  # unset is on unless --exact
        with pytest.raises(ValidationError, match="flash_attn"):
            parse("--cache-type-v", "q8_0", *off)
    assert engine_options(parse("--cache-type-v", "q8_0")).flash_attn is True
    s = parse("--cache-type-v", "q8_0", "--cache-type-k", "q8_0", "--flash-attn", "--exact")
    assert (s.cache_type_k, s.cache_type_v, s.flash_attn) == ("q8_0", "q8_0", True)


def test_fast_by_default_exact_on_request() -> None:
    """Unset, flash attention is on and every cached token is reused; --exact turns them to
    the bit-exact contract; speculation is off unless asked; explicit flags win either way."""
    fast = engine_options(parse())
    assert (fast.exact, fast.flash_attn, fast.speculate) == (False, True, False)
    exact = engine_options(parse("--exact"))
    # None: on for encoders only (embedding and rerank models keep no KV to reuse).
    assert (exact.exact, exact.flash_attn, exact.speculate) == (True, None, False)
    mixed = engine_options(parse("--exact", "--flash-attn", "--speculate"))
    assert (mixed.exact, mixed.flash_attn, mixed.speculate) == (True, True, True)
    plain = engine_options(parse("--no-flash-attn", "--no-speculate"))
    assert (plain.exact, plain.flash_attn, plain.speculate) == (False, False, False)


def test_exact_and_speculate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_EXACT", "true")
    monkeypatch.setenv("EDGED_SPECULATE", "true")
    e = engine_options(Settings())
    assert (e.exact, e.speculate) == (True, True)


def test_unknown_cache_type_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse("--cache-type-k", "q3_k")
    with pytest.raises(ValidationError):
        Settings(cache_type_k="int8")  # type: ignore[arg-type]


def test_cache_types_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_CACHE_TYPE_K", "q4_0")
    assert Settings().cache_type_k == "q4_0"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_default_threads_follow_cpu_affinity() -> None:
    """Pinned to one CPU (taskset, cpusets, systemd CPUAffinity=), edged runs one thread."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from daemon.config import Settings; print(Settings().threads)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert 1 <= default_threads() <= (os.cpu_count() or 1)
