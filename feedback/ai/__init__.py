"""Machine feedback: verdicts made by a model the engine serves, carried and stored like the votes of people.

``label`` asks an AI judge to pick between the two answers of stored pairs (RLAIF);
``constitution`` has a model critique and revise stored answers against written principles,
each revision preferred over its original. ``engine`` is the engine's OpenAI-compatible API as
these commands use it, and ``batch`` runs the requests in parallel and hands the events to the
broker as they come. The events go to Kafka directly (the gateway takes end users' feedback only)
and through the worker, which checks and stores them with their ``source`` (see
``feedback.filters.pipeline`` for what it checks, and why no more).
"""
