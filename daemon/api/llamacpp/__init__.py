"""llama-server's own API (/completion, /infill, /props, /slots ...) over the one engine."""
