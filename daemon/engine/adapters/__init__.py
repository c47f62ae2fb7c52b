"""LoRA adapters: the loaded set and a request's adapter set."""
