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


@dataclass(kw_only=True)
class ContractSuite:
    """The batch-level contract: a GX suite on each micro-batch (about 15 ms per 500 rows, context built once)."""

    min_batch: int
    max_label_share: float
    max_unknown_share: float

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> ContractSuite:
        return cls(min_batch=settings.contract_min_batch, max_label_share=settings.contract_max_label_share,
                   max_unknown_share=settings.contract_max_unknown_share)

    def build(self) -> tuple[Any, Any, Any]:
        return _gx_suites(self.max_label_share, self.max_unknown_share)

    def check(self, rows: list[BatchRow]) -> list[dict[str, Any]]:
        """Validate one micro-batch; returns one alert per failed expectation."""
        if not rows:
            return []
        import pandas as pd

        definition, row_suite, share_suite = self.build()
        top_label = Counter(r.label for r in rows).most_common(1)[0][0]
        frame = pd.DataFrame({
            "label": [r.label for r in rows],
            "user_id": [r.user_id for r in rows],
            "unknown_target": [float(r.unknown_target) for r in rows],
            "is_top_label": [float(r.label == top_label) for r in rows],
        })
        batch = definition.get_batch(batch_parameters={"dataframe": frame})
        suites = [row_suite, share_suite] if len(rows) >= self.min_batch else [row_suite]
        alerts = []
        for suite in suites:
            # A bare pass/fail first (half the cost of the row checks); the details only for a batch that failed.
            if batch.validate(suite, result_format="BOOLEAN_ONLY").success:
                continue
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

