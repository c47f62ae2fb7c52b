"""Start llama-cpp-python's own server (`python -m llama_cpp.server`) for side-by-side runs.

On CPUs with AMX, llama.cpp 0.3.36 crashes while decoding unless its extra CPU buffers are
off; edged turns them off itself, so the peer gets the same setting here, nothing else.
Needs `pip install 'llama-cpp-python[server]==0.3.36'`.

    python bench/peer_server.py --model PATH --port 8001 --n_threads 2 --interrupt_requests False
"""

from __future__ import annotations

import runpy
import sys

import llama_cpp.llama_cpp as bindings

from daemon.engine.native.llama import cpu_has_amx

if cpu_has_amx():
    _defaults = bindings.llama_model_default_params

    def _no_extra_buffers() -> bindings.llama_model_params:
        params = _defaults()
        params.use_extra_bufts = False
        return params

    # llama_cpp.Llama looks the function up on this module at call time.
    bindings.llama_model_default_params = _no_extra_buffers

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
