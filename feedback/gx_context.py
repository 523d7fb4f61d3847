"""Great Expectations as Flywheel uses it (the worker's contract suite, the trainer's snapshot checks).

Ephemeral contexts only: the suites live in code, nothing is written to disk, no usage
analytics leave the machine, and no GX progress bars (the CLI draws its own). GX takes
seconds to import, so it is imported when a context is made, never at module import: the
gateway imports ``feedback`` and must not pay for it.
"""

from __future__ import annotations

import os
from typing import Any


def ephemeral_context() -> Any:
    """A fresh in-memory GX data context, quiet."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def json_safe(value: Any, max_items: int | None = None) -> Any:
    """A GX result value (numpy scalars, lists of them) as plain JSON; lists cut to ``max_items``."""
    if isinstance(value, list):
        return [json_safe(v, max_items) for v in value[:max_items]]
    return value.item() if hasattr(value, "item") else value
