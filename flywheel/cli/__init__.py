"""Thin typer commands; the work lives in ``serving``, ``feedback`` and ``trainer``."""
