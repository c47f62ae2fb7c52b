"""Ollama's native API (/api/chat, /api/generate, /api/tags ...) over the one engine."""
