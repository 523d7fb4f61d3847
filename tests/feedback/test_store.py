"""The idempotent store and the integrity verdicts, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from feedback import quarantine
from feedback.db.models import Completion, Feedback, Quarantine
from feedback.db.session import transaction
from feedback.events import ChatMessage, Event, PairwiseEvent, ThumbsEvent
from feedback.filters import Pipeline
from feedback.store import BatchResult, Verdict, prompt_hash, store_batch
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings


def store(sessions: sessionmaker[Session], batch: Sequence[Event]) -> BatchResult:
    """Store through a fresh pipeline without reading-time limits: these tests are about integrity."""
    with transaction(sessions) as session:
        return store_batch(session, batch, Pipeline.rebuild(session, filter_settings(timing_min_ms=0,
                                                                                     timing_ms_per_char=0)))


def count(sessions: sessionmaker[Session], model: type[Completion | Feedback | Quarantine]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def quarantined(sessions: sessionmaker[Session]) -> list[Quarantine]:
    with sessions() as session:
        return list(session.scalars(select(Quarantine).order_by(Quarantine.id)))


def test_same_events_twice_are_stored_once(sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    completion = build.completion(app_id)
    thumbs = build.thumbs(app_id, completion.response_id)
    orphan = build.thumbs(app_id, build.completion(app_id).response_id)  # quarantined: its completion never came

    first = store(sessions, [completion, thumbs, orphan, thumbs])
    again = store(sessions, [completion, thumbs, orphan])

    assert (first.completions, first.accepted, first.quarantined, first.duplicates) == (1, 1, 1, 1)
    assert (again.completions, again.accepted, again.quarantined, again.duplicates) == (0, 0, 0, 3)
    assert (count(sessions, Completion), count(sessions, Feedback), count(sessions, Quarantine)) == (1, 1, 1)


def test_quarantined_event_stays_a_no_op_after_its_completion_arrives(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    completion = build.completion(app_id)
    early = build.thumbs(app_id, completion.response_id)
    store(sessions, [early])
    result = store(sessions, [completion, early])
    assert (result.completions, result.duplicates) == (1, 1)
    assert (count(sessions, Feedback), count(sessions, Quarantine)) == (0, 1)


def test_a_second_event_for_a_stored_response_is_a_duplicate(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    completion = build.completion(app_id)
    result = store(sessions, [completion, completion.model_copy(update={"event_id": "evt_other"})])
    assert (result.completions, result.duplicates) == (1, 1)


def test_unknown_response_is_quarantined_whole(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    event = build.thumbs(app_id, build.completion(app_id).response_id, rating="down", comment="meh")
    result = store(sessions, [event])
    assert (result.accepted, result.quarantined) == (0, 1)
    [row] = quarantined(sessions)
    assert row.reasons == ["unknown_response"]
    assert row.evidence == {"unknown_response": {"response_id": event.response_id}}
    assert row.payload == event.model_dump(mode="json")
    assert (row.event_id, row.type, row.app_id, row.user_id) == (event.event_id, "thumbs", app_id, "u1")
    assert count(sessions, Feedback) == 0


def test_unknown_or_half_known_pair_is_quarantined(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    a, _b = build.pair(app_id)
    unknown = build.pairwise(app_id, build.pair(app_id)[0].pair_id or "")
    half = build.pairwise(app_id, a.pair_id or "")
    result = store(sessions, [a, unknown, half])
    assert result.quarantined == 2
    rows = quarantined(sessions)
    assert [r.reasons for r in rows] == [["unknown_pair"], ["unknown_pair"]]
    assert rows[1].evidence == {"unknown_pair": {"pair_id": a.pair_id, "found_responses": [a.response_id]}}


def test_feedback_from_another_app_is_quarantined(
    db_url: str, sessions: sessionmaker[Session], make_app: Callable[[str], int], app_id: int, build: EventBuilder
) -> None:
    other = make_app(db_url)
    completion = build.completion(app_id)
    a, b = build.pair(app_id)
    result = store(sessions, [
        completion, a, b,
        build.thumbs(other, completion.response_id),
        build.pairwise(other, a.pair_id or ""),
    ])
    assert (result.completions, result.accepted, result.quarantined) == (3, 0, 2)
    rows = quarantined(sessions)
    assert [r.reasons for r in rows] == [["app_mismatch"], ["app_mismatch"]]
    assert rows[0].evidence == {"app_mismatch": {"event_app_id": other, "served_app_ids": [app_id]}}


def test_completion_and_feedback_in_one_batch_are_accepted(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    completion = build.completion(app_id)
    a, b = build.pair(app_id)
    thumbs = build.thumbs(app_id, completion.response_id, rating="down", correction="Paris, France.")
    pairwise = build.pairwise(app_id, a.pair_id or "", choice="b")
    result = store(sessions, [completion, thumbs, a, b, pairwise])
    assert (result.completions, result.accepted, result.quarantined) == (3, 2, 0)
    with sessions() as session:
        rows = {f.type: f for f in session.scalars(select(Feedback))}
    assert (rows["thumbs"].response_id, rows["thumbs"].rating, rows["thumbs"].correction) == (
        completion.response_id, "down", "Paris, France."
    )
    assert (rows["pairwise"].pair_id, rows["pairwise"].choice, rows["pairwise"].response_id) == (a.pair_id, "b", None)
    assert {f.weight for f in rows.values()} == {1.0}
    assert result.outcomes[("thumbs", "accepted")] == 1
    assert result.outcomes[("completion", "stored")] == 3


def test_completion_of_an_unknown_app_is_invalid_not_fatal(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    result = store(sessions, [build.completion(app_id + 1000), build.completion(app_id)])
    assert (result.invalid, result.completions) == (1, 1)
    assert count(sessions, Completion) == 1


def test_prompt_hash_groups_answers_to_one_prompt(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    first, second = build.completion(app_id), build.completion(app_id, answer="It is Paris.")
    other = build.completion(app_id, messages=[ChatMessage(role="user", content="And of Spain?")])
    store(sessions, [first, second, other])
    with sessions() as session:
        rows = session.execute(select(Completion.response_id, Completion.prompt_hash))
        hashes = {r.response_id: r.prompt_hash for r in rows}
    assert hashes[first.response_id] == hashes[second.response_id] == prompt_hash(first.messages)
    assert hashes[other.response_id] != hashes[first.response_id]
    assert len(hashes[first.response_id]) == 64


def test_a_custom_judge_decides_what_is_quarantined(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    """The seam the filter pipeline plugs into: any judge's reasons, evidence and weight are kept."""
    completion = build.completion(app_id)
    down, up = build.thumbs(app_id, completion.response_id, rating="down"), build.thumbs(app_id, completion.response_id)

    def no_downvotes(session: Session, event: ThumbsEvent | PairwiseEvent) -> Verdict:
        if isinstance(event, ThumbsEvent) and event.rating == "down":
            return Verdict(["downvote"], {"rating": event.rating})
        return Verdict(weight=0.5)

    with transaction(sessions) as session:
        result = store_batch(session, [completion, down, up], judge=no_downvotes)
    assert (result.accepted, result.quarantined) == (1, 1)
    [row] = quarantined(sessions)
    assert (row.event_id, row.reasons, row.evidence) == (down.event_id, ["downvote"], {"rating": "down"})
    with sessions() as session:
        assert session.scalar(select(Feedback.weight).where(Feedback.event_id == up.event_id)) == 0.5


def test_event_ids_are_scoped_per_app(
    sessions: sessionmaker[Session], db_url: str, make_app: Callable[..., int], build: EventBuilder
) -> None:
    """App B's use of an event id never makes app A's vote with that id a no-op; A's own repeat still is."""
    app_a, app_b = make_app(db_url), make_app(db_url)
    answer_a, answer_b = build.completion(app_a), build.completion(app_b)
    vote_b = build.thumbs(app_b, answer_b.response_id, event_id="shared-1")
    lost_b = build.thumbs(app_b, build.completion(app_b).response_id, event_id="shared-2")  # quarantined
    store(sessions, [answer_a, answer_b, vote_b, lost_b])
    with transaction(sessions) as session:
        quarantine.purge(session, "shared-2", "cli:tester")

    vote_a = build.thumbs(app_a, answer_a.response_id, event_id="shared-1")
    lost_a = build.thumbs(app_a, build.completion(app_a).response_id, event_id="shared-2")
    first = store(sessions, [vote_a, lost_a])
    again = store(sessions, [vote_a, lost_a, vote_b])

    assert (first.accepted, first.quarantined, first.duplicates) == (1, 1, 0)
    assert (again.accepted, again.quarantined, again.duplicates) == (0, 0, 3)
    with sessions() as session:
        stored = set(session.execute(select(Feedback.app_id, Feedback.event_id)).tuples())
        held = set(session.execute(select(Quarantine.app_id, Quarantine.event_id)).tuples())
    assert stored == {(app_a, "shared-1"), (app_b, "shared-1")}
    assert held == {(app_a, "shared-2")}
    with transaction(sessions) as session, pytest.raises(quarantine.NotQuarantined):
        quarantine.get_quarantined(session, "shared-2", app_b)  # B's was purged; A's is A's alone
