"""Embedding and reranking models: their own batching thread."""
