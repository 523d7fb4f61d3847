"""One router per endpoint group, as in vLLM's OpenAI entrypoints."""
