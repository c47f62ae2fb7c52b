"""OpenAI-compatible dialect."""
