"""Live numbers per version come from accepted feedback only, stored by the worker's real store and filters.

On SQLite and PostgreSQL: answers of two versions, thumbs and picks on them, plus votes the filters
quarantine (an unknown answer, another app's answer); the quarantined ones must not count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from feedback.db.session import make_engine, session_factory
from feedback.events import Event, utcnow
from feedback.filters import Pipeline
from registry.live import head_to_head, version_numbers, wilson
from registry.model_versions import CHAMPION
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings, store, verdicts
from tests.registry.conftest import promotions, registered_model


def test_wilson_matches_the_textbook_interval() -> None:
    # Wilson (1927) for 6 of 10 at 95 %: 0.3127 to 0.8318 (as in Newcombe 1998, table I's method 3).
    interval = wilson(6, 10)
    assert (round(interval.low or 0, 4), round(interval.high or 0, 4)) == (0.3127, 0.8318)
    assert wilson(0, 20).low == 0 and (wilson(0, 20).high or 0) > 0.1  # not the empty interval of the normal one
    assert wilson(0, 0).estimate is None
    wide, narrow = wilson(50, 100), wilson(500, 1000)
    assert (wide.high or 0) - (wide.low or 0) > (narrow.high or 0) - (narrow.low or 0)


def traffic(build: EventBuilder, app_id: int, other_app: int, at: datetime | None = None) -> list[Event]:
    """v1 answers 10 chars, liked 6 of 10; v2 answers 30 chars, liked 2 of 10; picks v2 against v1 (served ``at``)."""
    now = at or utcnow() - timedelta(minutes=5)
    events: list[Event] = []
    for version, text, ups in (("1", "x" * 10, 6), ("2", "y" * 30, 2)):
        for i in range(10):
            answer = build.completion(app_id, model_version=version, answer=text, created_at=now, latency_ms=100.0)
            events += [answer, build.thumbs(app_id, answer.response_id, user_id=f"t{version}-{i}",
                                            rating="up" if i < ups else "down", created_at=now + timedelta(seconds=9))]
    # Picks: (A's version, B's version, choice): v2 wins 3, loses 5, ties 1, both bad 1; v1 against v1 is no meeting.
    picks = ([("2", "1", "a")] * 2 + [("1", "2", "b")] + [("2", "1", "b")] * 3 + [("1", "2", "a")] * 2
             + [("2", "1", "tie"), ("1", "2", "both_bad"), ("1", "1", "a")])
    for i, (version_a, version_b, choice) in enumerate(picks):
        side_a, side_b = build.pair(app_id)
        side_a = side_a.model_copy(update={"model_version": version_a, "created_at": now})
        side_b = side_b.model_copy(update={"model_version": version_b, "created_at": now})
        events += [side_a, side_b, build.pairwise(app_id, side_a.pair_id or "", user_id=f"p{i}", choice=choice,
                                                  created_at=now + timedelta(seconds=9))]
    # Quarantined: a thumbs up on an answer never served, and another app's up on a v2 answer.
    foreign = build.completion(other_app, model_version="2", answer="z" * 30, created_at=now)
    events += [build.thumbs(app_id, build.completion(app_id).response_id, user_id="ghost"),
               foreign, build.thumbs(app_id, foreign.response_id, user_id="intruder", rating="up",
                                     created_at=now + timedelta(seconds=9))]
    return events


def test_live_numbers_count_accepted_feedback_only(
    db_url: str, make_app: Callable[[str], int], build: EventBuilder, tmp_path: Path,
) -> None:
    app_id, other_app = make_app(db_url), make_app(db_url)
    sessions = session_factory(make_engine(db_url))
    store(sessions, Pipeline(filter_settings(timing_min_ms=0, timing_ms_per_char=0)), traffic(build, app_id, other_app))
    held = {event: reasons for event, reasons in verdicts(sessions).items() if reasons}
    assert sorted(r for reasons in held.values() for r in reasons) == ["app_mismatch", "unknown_response"]

    with sessions() as session:
        numbers = version_numbers(session)
        meetings = head_to_head(session)
        later = version_numbers(session, since=utcnow())
    assert (numbers["1"].thumbs_up.successes, numbers["1"].thumbs_up.trials) == (6, 10)
    assert (numbers["2"].thumbs_up.successes, numbers["2"].thumbs_up.trials) == (2, 10)  # the intruder's up is out
    # Single answers, pair sides ("Paris.", 12.5 ms; v1 has 12 of the 11 pairs' sides, v2 10), the other app's answer.
    assert numbers["1"].answers == 10 + 12 and numbers["2"].answers == 10 + 10 + 1
    assert numbers["1"].mean_latency_ms == pytest.approx((10 * 100 + 12 * 12.5) / 22)
    assert numbers["2"].mean_answer_chars == pytest.approx((10 * 30 + 10 * 6 + 30) / 21)
    v2 = meetings[("2", "1")]
    assert (v2.wins, v2.losses, v2.ties, v2.both_bad) == (3, 5, 1, 1)
    assert v2.win_rate.estimate == pytest.approx(3 / 8) and v2.win_rate.trials == 8
    v1 = meetings[("1", "2")]
    assert (v1.wins, v1.losses) == (5, 3) and math.isclose((v1.win_rate.low or 0), 1 - (v2.win_rate.high or 0))
    assert set(meetings) == {("1", "2"), ("2", "1")} and later == {}

    registry = promotions(db_url, registered_model(tmp_path))()
    registry._move(CHAMPION, "1", action="bootstrap", actor="system", reason=None)
    listed = {info.version: info for info in registry.live_versions()}
    assert listed["2"].against_champion == v2 and listed["1"].against_champion is None
    assert listed["2"].live == numbers["2"] and listed["3"].live is None
