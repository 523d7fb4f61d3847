"""The OpenAI-compatible gateway: chat through the vLLM engine, feedback into Kafka, admin routes for ops,
and the watcher that swaps the live model when the champion alias moves."""
