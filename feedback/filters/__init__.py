"""The filtering layer: every feedback event is accepted (with a weight) or quarantined (with reasons).

``Pipeline`` composes the filters into the judge ``feedback.store.store_batch`` calls;
``FilterSettings`` holds every threshold (``FLYWHEEL_FILTER_*``).
"""

from feedback.filters.pipeline import Pipeline
from feedback.filters.settings import FilterSettings

__all__ = ["FilterSettings", "Pipeline"]
