"""Speculative decoding: where drafts come from and what they earn."""
