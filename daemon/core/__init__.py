"""The dialect-neutral core every API dialect translates into: the chat request, tools,
formats and grammars, reasoning, sampling, adapters, safety, choices and usage; no HTTP."""
