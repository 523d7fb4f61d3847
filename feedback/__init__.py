"""Feedback in: the event contract, the gateway's producer and outbox, the worker that filters and stores
events, and the store every other part reads. The lowest floor: it imports no other Flywheel package."""
