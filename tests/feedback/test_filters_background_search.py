"""The consensus search runs beside the stream: batches commit while it runs, and its flags arrive later, the same.

The search is held back here (its ``decide`` waits for an event) to stand for a search that takes
minutes; ``search_wait_s=0`` is a batch that never waits for it.
"""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import transaction
from feedback.filters import Pipeline
from feedback.filters.base import Flag
from feedback.filters.consensus import Snapshot
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings, store, verdicts
from tests.feedback.test_filters_consensus_content import traffic

SETTINGS = {"bot_min_votes": 1000, "campaign_min_accounts": 1000, "velocity_user_max": 1000}


def _held(pipeline: Pipeline) -> tuple[threading.Event, list[int]]:
    """Make the pipeline's consensus searches wait for the returned event; the list counts the searches run."""
    release, runs = threading.Event(), []
    decide = pipeline.consensus.decide

    def slow(snapshot: Snapshot) -> list[Flag]:
        release.wait(60)
        runs.append(len(snapshot.candidates))
        return decide(snapshot)

    pipeline.consensus.decide = slow  # type: ignore[method-assign]
    return release, runs


def test_batches_commit_while_the_search_runs_and_its_flags_come_later(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(**SETTINGS, search_wait_s=0))
    release, runs = _held(pipeline)
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
    release, runs = _held(pipeline)
    batches, events = traffic(build, app_id, lambda quantity, on_topic: quantity, seed=11)
    store(sessions, pipeline, [e for batch in batches for e in batch])  # the search starts after this batch
    release.set()
    job = pipeline._consensus_job
    assert job is not None and job.result(60)[0]
    store(sessions, pipeline, [])  # the next batch, even an empty one, stores what it found
    got = verdicts(sessions)
    assert all(got[e] == ["against_consensus"] for e in events["attacker"])
    assert len(runs) == 1
