"""Reranking: converted cross-encoders served on /v1/rerank."""
