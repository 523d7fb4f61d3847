"""The consensus search runs beside the stream: batches commit while it runs, and its flags arrive later, the same.

The search is held back here (its ``decide`` waits for an event) to stand for a search that takes
minutes; ``search_wait_s=0`` is a batch that never waits for it.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import transaction
from feedback.filters import Pipeline
from feedback.filters.base import Flag
from feedback.filters.campaigns import CampaignFilter
from feedback.filters.consensus import ConsensusFilter
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings, store, verdicts
from tests.feedback.test_filters_consensus_content import traffic

SETTINGS = {"bot_min_votes": 1000, "campaign_min_accounts": 1000, "velocity_user_max": 1000}


def held(history_filter: ConsensusFilter | CampaignFilter) -> tuple[threading.Event, list[object]]:
    """Make the filter's searches (the costly part, ``decide``) wait for the returned event; the list gets the
    snapshot of each search run."""
    release, runs = threading.Event(), []
    decide = history_filter.decide

    def slow(snapshot: Any) -> list[Flag]:
        release.wait(60)
        runs.append(snapshot)
        return decide(snapshot)

    setattr(history_filter, "decide", slow)  # noqa: B010 (mypy refuses assigning to a method)
    return release, runs


def test_batches_commit_while_the_search_runs_and_its_flags_come_later(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(**SETTINGS, search_wait_s=0))
    release, runs = held(pipeline.consensus)
    batches, events = traffic(build, app_id, lambda quantity, on_topic: quantity, seed=11)
    for batch in batches:
        store(sessions, pipeline, batch)  # would block here if the search ran inside the batch
    got = verdicts(sessions)
    assert all(got[e] == [] for ids in events.values() for e in ids)  # every vote stored, nobody flagged yet
    assert runs == []
    release.set()
    with transaction(sessions) as session:
        assert pipeline.catch_up(session)  # the quiet stream waits for the search, and the one queued behind it
    assert len(runs) == 2  # the first batch's search, then one over the raters who voted while it ran
    with transaction(sessions) as session:
        assert not pipeline.catch_up(session)
    got = verdicts(sessions)
    assert all(got[e] == ["against_consensus"] for e in events["attacker"])
    assert not any(got[e] for user, ids in events.items() if user != "attacker" for e in ids)


def test_a_later_batch_stores_the_flags_of_a_search_that_finished(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(**SETTINGS, search_wait_s=0))
    release, runs = held(pipeline.consensus)
    batches, events = traffic(build, app_id, lambda quantity, on_topic: quantity, seed=11)
    store(sessions, pipeline, [e for batch in batches for e in batch])  # the search starts after this batch
    release.set()
    assert not pipeline._history_searches.idle and pipeline._history_searches.wait(60)
    store(sessions, pipeline, [])  # the next batch, even an empty one, stores what it found
    got = verdicts(sessions)
    assert all(got[e] == ["against_consensus"] for e in events["attacker"])
    assert len(runs) == 1
