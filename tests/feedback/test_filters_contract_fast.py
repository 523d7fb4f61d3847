"""The contract suite's fast path: its expectations evaluated on the frame agree with GX on every batch.

``ContractSuite.check`` asks GX only when ``_holds`` says an expectation of a suite fails
there, so a batch ``_holds`` wrongly passed would lose its alert. These batches are built to
sit on every edge of the suites: unknown labels, missing user ids, label and unknown-target
shares below, at and above their limits, batches below and above the size of the share checks.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from feedback.filters.contract import LABELS, BatchRow, ContractSuite, _holds
from feedback.gx_context import json_safe

SUITE = ContractSuite(min_batch=10, max_label_share=0.9, max_unknown_share=0.2)
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def batch(rng: random.Random) -> list[BatchRow]:
    size = rng.choice([1, 5, 9, 10, 11, 20, 50])
    top = rng.choice(LABELS)
    top_share = rng.choice([0.5, 0.8, 0.9, 0.95, 1.0])
    unknown_share = rng.choice([0.0, 0.1, 0.2, 0.3])
    rows = []
    for n in range(size):
        label = top if n < round(top_share * size) else "maybe" if rng.random() < 0.05 else rng.choice(LABELS)
        user = None if rng.random() < 0.03 else f"u{rng.randrange(8)}"
        rows.append(BatchRow(label, cast(str, user), n < round(unknown_share * size), NOW))
    rng.shuffle(rows)
    return rows


def gx_alerts(rows: list[BatchRow]) -> list[dict[str, Any]]:
    """The alerts of GX validating every suite in full, whatever ``_holds`` says."""
    definition = SUITE.build()[0]
    frame, top_label = SUITE.frame(rows)
    validated = definition.get_batch(batch_parameters={"dataframe": frame})
    alerts = []
    for suite in SUITE.suites(rows):
        for outcome in validated.validate(suite).results:
            if not outcome.success:
                config = outcome.expectation_config
                column = config.kwargs.get("column")
                detail = {"expectation": config.type, "column": column} | {
                    k: json_safe(v, max_items=20) for k, v in outcome.result.items()
                    if k in ("observed_value", "unexpected_count", "partial_unexpected_list")}
                alerts.append({"check": f"{config.type}:{column}",
                               "detail": detail | ({"label": top_label} if column == "is_top_label" else {})})
    return alerts


@pytest.mark.parametrize("seed", range(4))
def test_each_expectation_holds_where_gx_says_it_does(seed: int) -> None:
    rng = random.Random(seed)
    definition = SUITE.build()[0]
    outcomes: set[tuple[str, bool]] = set()  # (expectation and column, whether it held)
    for _ in range(40):
        rows = batch(rng)
        frame, _ = SUITE.frame(rows)
        validated = definition.get_batch(batch_parameters={"dataframe": frame})
        for suite in SUITE.suites(rows):
            for expectation in suite.expectations:
                gx_says = bool(validated.validate(expectation, result_format="BOOLEAN_ONLY").success)
                name = f"{type(expectation).__name__}:{expectation.column}"
                assert _holds(expectation, frame) is gx_says, (name, frame)
                outcomes.add((name, gx_says))
    assert len(outcomes) == 8  # every expectation was seen both holding and failing


def test_the_alerts_are_gx_s_on_failing_and_passing_batches() -> None:
    rng = random.Random(7)
    failing = 0
    for _ in range(60):
        rows = batch(rng)
        expected = gx_alerts(rows)
        assert SUITE.check(rows) == expected
        failing += bool(expected)
    assert 10 < failing < 50


def test_a_share_exactly_at_its_limit_passes_as_in_gx() -> None:
    rows = [BatchRow("up" if n < 9 else "down", "u", n < 2, NOW) for n in range(10)]  # 0.9 and 0.2 exactly
    assert SUITE.check(rows) == gx_alerts(rows) == []
