"""edged: a local LLM inference daemon."""
