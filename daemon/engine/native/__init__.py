"""The llama.cpp binding: the one module importing llama.cpp, ggml RPC, GGUF headers."""
