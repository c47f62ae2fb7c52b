"""Anthropic Messages API dialect."""
