"""Kept state: the request_id store, the prompt cache, what each slot's KV holds."""
