"""Contract: per-event checks beyond the schema, and a Great Expectations suite on each micro-batch.

The schema and value sets are enforced twice: by pydantic when a record is decoded (an
undecodable record is rejected as invalid and counted) and by the GX suite, which guards
the stored contract against a drifting producer. The suite's batch-level expectations
catch what no single event shows: a flood of one label or a spike of unknown ids. A failed
expectation is an alert (a ``batch_alerts`` row and a counter), never a silent pass.

GX takes seconds to import, so it is imported when the first suite is built (in the
worker; ``feedback/gx_context.py``), never by the gateway, which imports ``feedback``.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from feedback.events import utcnow
from feedback.filters.base import FilterState, Finding, Vote
from feedback.filters.settings import FilterSettings
from feedback.gx_context import ephemeral_context, json_safe

LABELS = ("up", "down", "a", "b", "tie", "both_bad")


@dataclass(kw_only=True)
class ContractFilter:
    """Per event: a timestamp from the future means a broken or forged producer clock."""

    max_clock_skew_s: float
    name: str = "contract"
    reasons: tuple[str, ...] = ("contract",)

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> ContractFilter:
        return cls(max_clock_skew_s=settings.contract_max_clock_skew_s)

    def judge(self, state: FilterState, vote: Vote) -> list[Finding]:
        limit = utcnow() + timedelta(seconds=self.max_clock_skew_s)
        if vote.created_at <= limit:
            return []
        return [Finding("contract", {"check": "created_at_in_future", "created_at": vote.created_at.isoformat()})]


@dataclass
class BatchRow:
    """One feedback event of a micro-batch as the suite sees it."""

    label: str
    user_id: str
    unknown_target: bool
    created_at: datetime


@functools.cache
def _gx_suites(max_label_share: float, max_unknown_share: float) -> tuple[Any, Any, Any]:
    """Import GX and build the context and suites once per process (cached: pipelines rebuilt
    after a failed batch reuse them)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = ephemeral_context()
    asset = context.data_sources.add_pandas("feedback").add_dataframe_asset("micro_batch")
    definition = asset.add_batch_definition_whole_dataframe("whole")
    rows = context.suites.add(gx.ExpectationSuite(name="feedback_rows"))
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS)))
    rows.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="user_id"))
    shares = context.suites.add(gx.ExpectationSuite(name="feedback_shares"))
    shares.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="is_top_label", max_value=max_label_share))
    shares.add_expectation(gxe.ExpectColumnMeanToBeBetween(column="unknown_target", max_value=max_unknown_share))
    return definition, rows, shares


def _holds(expectation: Any, frame: Any) -> bool | None:
    """Whether ``expectation`` holds on the pandas ``frame``, computed as GX's pandas engine computes it (``isin``
    of the non-null values, ``notnull``, the column's ``mean`` against inclusive or strict bounds); None for any
    other kind or option (a ``mostly`` below 1, a row condition), which GX then decides itself."""
    import great_expectations.expectations as gxe

    if getattr(expectation, "row_condition", None) or (getattr(expectation, "mostly", 1) or 1) < 1:
        return None
    column = frame[expectation.column]
    if isinstance(expectation, gxe.ExpectColumnValuesToBeInSet):
        return bool(column.dropna().isin(list(expectation.value_set)).all())
    if isinstance(expectation, gxe.ExpectColumnValuesToNotBeNull):
        return bool(column.notnull().all())
    if isinstance(expectation, gxe.ExpectColumnMeanToBeBetween):
        mean, low, high = column.mean(), expectation.min_value, expectation.max_value
        if mean != mean:  # NaN: no values, GX fails it
            return False
        above = low is None or (mean > low if expectation.strict_min else mean >= low)
        below = high is None or (mean < high if expectation.strict_max else mean <= high)
        return bool(above and below)
    return None


@dataclass(kw_only=True)
class ContractSuite:
    """The batch-level contract: a GX suite on each micro-batch (context and suites built once).

    The suites' expectations are first evaluated on the batch's frame directly (``_holds``: the
    same computation as GX's pandas engine, about 1 ms against GX's 20-30 ms per batch, which was
    the worker's largest cost after its inserts); GX validates a suite in full, and writes the
    alert's details, only when one of its expectations does not hold there (or is of a kind
    ``_holds`` does not know). A batch that passes produces no alert either way, so the alerts
    are GX's; ``tests/feedback/test_filters_contract_fast.py`` checks the two agree.
    """

    min_batch: int
    max_label_share: float
    max_unknown_share: float

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> ContractSuite:
        return cls(min_batch=settings.contract_min_batch, max_label_share=settings.contract_max_label_share,
                   max_unknown_share=settings.contract_max_unknown_share)

    def build(self) -> tuple[Any, Any, Any]:
        return _gx_suites(self.max_label_share, self.max_unknown_share)

    @staticmethod
    def frame(rows: list[BatchRow]) -> tuple[Any, str]:
        """The micro-batch as the suites see it, and its most common label."""
        import pandas as pd

        top_label = Counter(r.label for r in rows).most_common(1)[0][0]
        return pd.DataFrame({
            "label": [r.label for r in rows],
            "user_id": [r.user_id for r in rows],
            "unknown_target": [float(r.unknown_target) for r in rows],
            "is_top_label": [float(r.label == top_label) for r in rows],
        }), top_label

    def suites(self, rows: list[BatchRow]) -> list[Any]:
        """The suites a micro-batch of these rows is validated against: the shares only on a batch large enough."""
        _, row_suite, share_suite = self.build()
        return [row_suite, share_suite] if len(rows) >= self.min_batch else [row_suite]

    def check(self, rows: list[BatchRow]) -> list[dict[str, Any]]:
        """Validate one micro-batch; returns one alert per failed expectation."""
        if not rows:
            return []
        definition = self.build()[0]
        frame, top_label = self.frame(rows)
        batch = None
        alerts = []
        for suite in self.suites(rows):
            if all(_holds(expectation, frame) for expectation in suite.expectations):
                continue
            batch = batch or definition.get_batch(batch_parameters={"dataframe": frame})
            for outcome in batch.validate(suite).results:
                if outcome.success:
                    continue
                config = outcome.expectation_config
                column = config.kwargs.get("column")
                detail: dict[str, Any] = {"expectation": config.type, "column": column}
                detail |= {k: json_safe(v, max_items=20) for k, v in outcome.result.items()
                           if k in ("observed_value", "unexpected_count", "partial_unexpected_list")}
                if column == "is_top_label":
                    detail["label"] = top_label
                alerts.append({"check": f"{config.type}:{column}", "detail": detail})
        return alerts
