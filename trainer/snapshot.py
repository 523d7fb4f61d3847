"""The frozen snapshot of the feedback a round trains on, and the Great Expectations suite that gates it.

A round freezes exactly the accepted events it will learn from (keys, a content hash of the
examples built from them, counts by source and label, the time window) before any training,
where human and machine feedback are counted apart (examples by ``trainer.pairs.Source``, events
by ``feedback.source``),
and logs it as an MLflow artifact, so every model version can be traced to its feedback.

The suite then refuses a snapshot that should not train a model unattended:
- ``min_rows``: too few events to learn anything but noise;
- ``label_balance``: the share of positive labels (``a``/``up``) outside
  ``[min_share, 1 - min_share]``: a position bias in pairwise votes or a flood of one rating,
  the usual footprint of a bot or a broken client;
- ``unique_event_ids`` / ``unique_votes``: one event twice, or one user voting twice on the
  same answer or pair (a replay the idempotency key did not catch); a voter is a user of one
  source, so an end user whose id reads like a judge's is someone else;
- ``no_quarantined``: an event that has since been quarantined (ops or a re-run filter
  flagged it after it was accepted).
Events are keyed by ``(app_id, event_id)`` throughout (``EventKey``): an event id is unique
only per app, so an app reusing another app's ids must neither duplicate nor quarantine that
app's votes in a snapshot, which would block training for everyone.
Great Expectations is imported lazily (about 4 s), only when a round actually validates.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.id_lists import id_chunks
from feedback.db.models import Feedback, Quarantine
from feedback.gx_context import ephemeral_context, json_safe
from trainer.pairs import EventKey, Example

POSITIVE_LABELS = frozenset({"a", "up"})

Row = TypeVar("Row", Feedback, Quarantine)


@dataclass(frozen=True)
class SnapshotEvent:
    """One accepted feedback event as the snapshot records it."""

    app_id: int
    event_id: str
    kind: str  # thumbs | pairwise
    source: str  # who gave it: human, ai, constitution
    label: str
    weight: float
    user_id: str
    target: str  # the response id (thumbs) or pair id (pairwise) the vote is about
    created_at: str


@dataclass(frozen=True)
class Snapshot:
    """What a training round learned from: recorded in MLflow so every version has its lineage."""

    content_hash: str
    algorithm: str
    event_ids: list[EventKey]  # serialised as [app_id, event_id] pairs
    counts_by_source: dict[str, int]  # training + held-out examples by source: pairwise, thumbs, ai, constitution
    events_by_source: dict[str, int]  # events by who gave them: human, ai, constitution
    counts_by_label: dict[str, int]  # events by label: a, b, up, down
    window_start: str | None
    window_end: str | None
    train_examples: int
    heldout_examples: int
    events: list[SnapshotEvent] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SnapshotCheck:
    name: str
    passed: bool
    observed: Any
    expected: str


@dataclass(frozen=True)
class SnapshotValidation:
    passed: bool
    checks: list[SnapshotCheck]

    def failures(self) -> list[str]:
        return [f"{c.name}: observed {c.observed}, expected {c.expected}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def freeze(
    factory: sessionmaker[Session], algorithm: str, train: Sequence[Example], heldout: Sequence[Example]
) -> Snapshot:
    """Read the events behind ``train`` and ``heldout`` and fix them, with a hash of exactly the examples used."""
    everything = [*train, *heldout]
    event_ids = sorted({e for ex in everything for e in ex.event_ids})
    canonical = json.dumps(
        {"algorithm": algorithm, "train": [asdict(x) for x in train], "heldout": [asdict(x) for x in heldout]},  # type: ignore[call-overload]
        sort_keys=True,
        ensure_ascii=False,
    )
    with factory() as session:
        events = [
            SnapshotEvent(
                app_id=fb.app_id,
                event_id=fb.event_id,
                kind=fb.type,
                source=fb.source,
                label=str(fb.rating or fb.choice),
                weight=fb.weight,
                user_id=fb.user_id,
                target=str(fb.response_id or fb.pair_id),
                created_at=fb.created_at.isoformat(),
            )
            for fb in _stored(session, Feedback, event_ids)
        ]
    times = sorted(e.created_at for e in events)
    return Snapshot(
        content_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        algorithm=algorithm,
        event_ids=event_ids,
        counts_by_source=dict(Counter(x.source for x in everything)),
        events_by_source=dict(Counter(e.source for e in events)),
        counts_by_label=dict(Counter(e.label for e in events)),
        window_start=times[0] if times else None,
        window_end=times[-1] if times else None,
        train_examples=len(train),
        heldout_examples=len(heldout),
        events=events,
    )


def quarantined_among(factory: sessionmaker[Session], keys: Sequence[EventKey]) -> list[EventKey]:
    """Which of ``keys`` sit in quarantine now: another app's quarantined event with the same id does not count.

    """
    with factory() as session:
        return [EventKey(q.app_id, q.event_id) for q in _stored(session, Quarantine, keys)]


def _stored(session: Session, model: type[Row], keys: Sequence[EventKey]) -> list[Row]:
    """The rows of ``model`` with one of ``keys``, in key order: indexed by event id, then matched on the app."""
    wanted = set(keys)
    rows = (
        row
        for chunk in id_chunks({k.event_id for k in wanted})
        for row in session.scalars(select(model).where(model.event_id.in_(chunk)))
    )
    return sorted((r for r in rows if EventKey(r.app_id, r.event_id) in wanted), key=lambda r: (r.app_id, r.event_id))


def _key_text(key: EventKey) -> str:
    """One column value per key for the suite (the app id is an integer, so the first ``:`` splits it)."""
    return f"{key.app_id}:{key.event_id}"


def validate(
    snapshot: Snapshot, quarantined: Sequence[EventKey], min_rows: int, min_label_share: float
) -> SnapshotValidation:
    """Run the snapshot suite on the snapshot's events (an ephemeral GX context over a pandas frame)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = pd.DataFrame(
        {
            "event": [_key_text(EventKey(e.app_id, e.event_id)) for e in snapshot.events],
            "vote": [f"{e.source}|{e.user_id}|{e.target}" for e in snapshot.events],
            "positive": [float(e.label in POSITIVE_LABELS) for e in snapshot.events],
        }
    )
    named: dict[str, tuple[Any, str]] = {
        "min_rows": (gxe.ExpectTableRowCountToBeBetween(min_value=min_rows), f">= {min_rows} events"),
        "label_balance": (
            gxe.ExpectColumnMeanToBeBetween(
                column="positive", min_value=min_label_share, max_value=1 - min_label_share
            ),
            f"share of a/up labels in [{min_label_share}, {1 - min_label_share:g}]",
        ),
        "unique_event_ids": (gxe.ExpectColumnValuesToBeUnique(column="event"), "no event (app, event id) twice"),
        "unique_votes": (gxe.ExpectColumnValuesToBeUnique(column="vote"), "one vote per user and answer or pair"),
        "no_quarantined": (
            gxe.ExpectColumnValuesToNotBeInSet(column="event", value_set=[_key_text(k) for k in quarantined]),
            "no event that is in quarantine",
        ),
    }
    context = ephemeral_context()
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("events")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = context.suites.add(gx.ExpectationSuite(name="flywheel-snapshot"))
    by_id: dict[str, str] = {}
    for name, (expectation, _) in named.items():
        suite.add_expectation(expectation)
        by_id[str(expectation.id)] = name
    result = batch.validate(suite, result_format="SUMMARY")
    checks = []
    for r in result.results:
        assert r.expectation_config is not None
        name = by_id[str(r.expectation_config.id)]
        observed = r.result.get("observed_value", r.result.get("partial_unexpected_list"))
        checks.append(SnapshotCheck(name, bool(r.success), json_safe(observed), named[name][1]))
    order = list(named)
    checks.sort(key=lambda c: order.index(c.name))
    return SnapshotValidation(passed=all(c.passed for c in checks), checks=checks)

