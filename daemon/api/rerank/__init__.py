"""Reranking (`/v1/rerank`, `/rerank`, `/reranking`): Cohere/Jina/llama-server request shape."""
