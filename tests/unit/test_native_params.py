"""The llama.cpp parameter structs edged fills: a name that is no field of the C struct is
refused (ctypes would keep it as a plain attribute, ignored: 0.3.36 replaced `use_mmap` with
`load_mode`, and edged's --no-mmap set the old name for a while), and --no-mmap really reads
the weights instead of mapping them."""

from __future__ import annotations

import shutil
from pathlib import Path

import llama_cpp as lc
import pytest

from daemon.engine.native.llama import Model, ModelOptions
from daemon.engine.native.structs import checked


def test_a_name_that_is_no_field_is_refused() -> None:
    params = lc.llama_model_default_params()
    params.main_gpu = 0
    assert checked(params) is params
    params.use_mmap = False  # type: ignore[attr-defined]  # the pre-0.3.36 name
    with pytest.raises(TypeError, match="use_mmap"):
        checked(params)


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
@pytest.mark.parametrize("use_mmap", [True, False])
def test_no_mmap_reads_the_weights(tmp_path: Path, model_path: Path, use_mmap: bool) -> None:
    path = tmp_path / f"mmap-{use_mmap}.gguf"  # a name of its own: no other mapping of it
    shutil.copyfile(model_path, path)
    model = Model(path, ModelOptions(use_mmap=use_mmap))
    try:
        assert _mapped(path) is use_mmap
    finally:
        model.close()
