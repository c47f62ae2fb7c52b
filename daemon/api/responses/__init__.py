"""OpenAI Responses API dialect."""
