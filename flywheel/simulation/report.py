"""How well the filters did on a simulation: the truth file joined with the store on ``event_id``.

An event the worker stored is either in ``feedback`` (accepted) or in ``quarantine``;
one in neither is still on its way (pending). Adversarial recall is the share of attackers'
events quarantined, honest false positives the share of honest events quarantined; noisy
users are neither and are shown only for information. Pending events count as not
quarantined, so an unfinished measurement can only look worse, never better.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.id_lists import id_chunks
from feedback.db.models import Feedback, Quarantine
from flywheel.simulation.truth import USER_TYPES, TruthRecord, read_truth


@dataclass
class Whereabouts:
    """Where the store has put the events asked about."""

    accepted: set[str] = field(default_factory=set)
    quarantined: dict[str, list[str]] = field(default_factory=dict)  # event id -> reason codes

    def pending(self, event_ids: Iterable[str]) -> list[str]:
        return [e for e in event_ids if e not in self.accepted and e not in self.quarantined]


def locate(session: Session, event_ids: Sequence[str]) -> Whereabouts:
    found = Whereabouts()
    for chunk in id_chunks(event_ids):
        found.accepted.update(session.scalars(select(Feedback.event_id).where(Feedback.event_id.in_(chunk))))
        rows = session.execute(select(Quarantine.event_id, Quarantine.reasons).where(Quarantine.event_id.in_(chunk)))
        found.quarantined.update({row.event_id: list(row.reasons) for row in rows})
    return found


@dataclass
class Figures:
    """One user type's events and what became of them."""

    adversarial: bool
    events: int = 0
    accepted: int = 0
    quarantined: int = 0
    pending: int = 0
    poisoned: int = 0
    poisoned_quarantined: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def share_quarantined(self) -> float:
        return self.quarantined / self.events if self.events else 0.0

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "events": self.events,
            "quarantined": round(self.share_quarantined, 4),
            "quarantined_events": self.quarantined,
            "accepted_events": self.accepted,
            "pending_events": self.pending,
            "adversarial": self.adversarial,
            "reasons": dict(self.reasons.most_common()),
        }
        if self.poisoned:
            result |= {"poisoned_events": self.poisoned, "poisoned_quarantined_events": self.poisoned_quarantined}
        return result


@dataclass
class Report:
    by_type: dict[str, Figures]

    def _share(self, adversarial: bool, types: Iterable[str]) -> float | None:
        picked = [f for t, f in self.by_type.items() if t in types and f.adversarial == adversarial]
        events = sum(f.events for f in picked)
        return sum(f.quarantined for f in picked) / events if events else None

    @property
    def adversarial_recall(self) -> float | None:
        """Share of attackers' events quarantined; None when the scenario has no attackers."""
        return self._share(True, self.by_type)

    @property
    def honest_false_positive(self) -> float | None:
        """Share of honest users' events quarantined; None when there were none."""
        return self._share(False, ["honest"])

    @property
    def pending(self) -> int:
        return sum(f.pending for f in self.by_type.values())

    def passes(self, min_recall: float, max_honest_fp: float) -> bool:
        recall, false_positive = self.adversarial_recall, self.honest_false_positive
        return (recall is None or recall >= min_recall) and (false_positive is None or false_positive <= max_honest_fp)

    def as_json(self) -> dict[str, Any]:
        """Keyed by user type, plus ``overall`` with the two headline figures."""
        overall = {
            "adversarial_recall": _rounded(self.adversarial_recall),
            "honest_false_positive": _rounded(self.honest_false_positive),
            "events": sum(f.events for f in self.by_type.values()),
            "pending_events": self.pending,
        }
        return {t: f.as_json() for t, f in self.by_type.items()} | {"overall": overall}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def build_report(records: Iterable[TruthRecord], found: Whereabouts) -> Report:
    figures: dict[str, Figures] = {}
    for record in records:
        row = figures.setdefault(record.user_type, Figures(adversarial=record.adversarial))
        row.events += 1
        row.poisoned += record.poisoned
        reasons = found.quarantined.get(record.event_id)
        if reasons is not None:
            row.quarantined += 1
            row.poisoned_quarantined += record.poisoned
            row.reasons.update(reasons)
        elif record.event_id in found.accepted:
            row.accepted += 1
        else:
            row.pending += 1
    return Report({t: figures[t] for t in USER_TYPES if t in figures})


def measure(truth_path: Path, sessions: sessionmaker[Session], wait_seconds: float = 0.0,
            settle_seconds: float = 0.0) -> Report:
    """The report for ``truth_path`` once its events are stored (``settled``)."""
    return build_report(*settled(truth_path, sessions, wait_seconds, settle_seconds))


def settled(truth_path: Path, sessions: sessionmaker[Session], wait_seconds: float = 0.0,
            settle_seconds: float = 0.0) -> tuple[list[TruthRecord], Whereabouts]:
    """The truth file's records and where the store put them, waiting up to ``wait_seconds`` for pending events.

    Once every event is stored, ``settle_seconds`` more pass before the final read: the history
    searches (campaigns, consensus) may quarantine stored votes up to ``search_interval_s`` later.
    """
    records = list(read_truth(truth_path))
    event_ids = [r.event_id for r in records]
    deadline = time.monotonic() + wait_seconds
    while True:
        with sessions() as session:
            found = locate(session, event_ids)
        if not found.pending(event_ids) or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if settle_seconds > 0 and not found.pending(event_ids):
        time.sleep(settle_seconds)
        with sessions() as session:
            found = locate(session, event_ids)
    return records, found
