"""The decode loop: the per-model scheduler thread, per-request state, slots, sampling helpers."""
