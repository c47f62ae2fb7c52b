"""The engine: llama.cpp scheduling, sampling, caches; no HTTP."""
