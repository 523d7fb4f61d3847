"""The campaign search runs beside the stream, before the consensus in one round, and decides as in the batch.

Three things make a search beside the stream decide what the search inside the batch decided:
the campaign search's snapshot holds what it reads (later changes to the state do not reach it);
the consensus of the same round learns without the raters the campaign search condemns, exactly
as ``ConsensusFilter.prepare`` would have read the state once they were flagged; and a pipeline
whose searches are held back, while later batches commit, ends with the verdicts of a pipeline
that searched inside every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import FlaggedRater
from feedback.db.session import transaction
from feedback.events import Event, ThumbsEvent
from feedback.filters import FilterSettings, Pipeline
from feedback.filters.background import Search, Searches
from feedback.filters.base import Answer, Flag, Rater, Vote
from feedback.filters.campaigns import CampaignFilter, Snapshot
from tests.bench.synthetic_history import APP, History, Population, build_history
from tests.conftest import EventBuilder
from tests.feedback.filtering import campaign_traffic, filter_settings, store, verdicts
from tests.feedback.test_filters_background_search import held
from tests.feedback.test_filters_consensus_content import traffic

PHRASE = "Visit https://deals.example/now with MegaCorp"
SMALL = Population(honest=30, attackers=4, flippers=4, seed=3)


def _with_campaign(history: History, accounts: range, votes: int = 12) -> set[Rater]:
    """``accounts`` shill accounts each upvoting ``votes`` answers that carry the phrase (their own, to new prompts)."""
    state, shills = history.state, set()
    last = max(vote.created_at for votes_of in state.votes.values() for vote in votes_of)
    for account in accounts:
        rater: Rater = (APP, f"shill{account}")
        shills.add(rater)
        for n in range(votes):
            key = f"shill{account}-{n}"
            created = last + timedelta(seconds=n + 1)
            state.add_answer(Answer(f"r-{key}", None, APP, f"h-{key}", f"A short answer {n}. {PHRASE}.", created,
                                    f"Question {key}?"))
            state.record(Vote(f"e-{key}", rater, "thumbs", f"r-{key}", "up", None, created), accepted=True)
    return shills


def test_a_round_decides_in_turn_each_search_without_the_raters_the_earlier_ones_condemned() -> None:
    """A round's later search decides on its snapshot without the raters an earlier one flagged; the flags come in
    the searches' order, and only those still new when collected."""
    shill, honest, late = (1, "shill"), (1, "honest"), (1, "late")
    seen: list[list[Rater]] = []

    def second_decides(snapshot: list[Rater]) -> list[Flag]:
        seen.append(snapshot)
        return [Flag(rater, "against_consensus", {}) for rater in snapshot]

    searches = Searches([
        Search(sorted, lambda snapshot: [Flag(r, "campaign", {}) for r in snapshot if r == shill], lambda _: True),
        Search(sorted, second_decides, still_new=lambda flag: flag.rater != late,
               without=lambda snapshot, raters: [r for r in snapshot if r not in raters] or None),
    ], "test-search")
    searches.due = {shill, honest, late}
    searches.start()
    assert searches.due == set() and not searches.idle
    flags = searches.collect(60)
    assert flags is not None and [(f.rater, f.reason) for f in flags] == [(shill, "campaign"),
                                                                          (honest, "against_consensus")]
    assert seen == [[honest, late]] and searches.idle and searches.collect(0) is None


def _campaigns() -> CampaignFilter:
    return Pipeline(FilterSettings()).campaigns


def test_a_campaign_snapshot_decides_as_the_search_on_the_state_did() -> None:
    """``decide`` on a snapshot gives the flags (raters, evidence) ``review`` gives on the state as it was, whatever
    the state does after the snapshot; and the next search, on the indexing the first one left, too."""
    beside, history = _campaigns(), build_history(SMALL)
    shills = _with_campaign(history, range(4))
    snapshot = beside.prepare(history.state, set(history.state.votes))
    assert isinstance(snapshot, Snapshot)
    later = _with_campaign(history, range(4, 6))  # votes and answers after the snapshot
    history.state.flags[next(iter(shills))]["campaign"] = {}  # and a flag
    found = beside.decide(snapshot)

    inside, reference = _campaigns(), build_history(SMALL)
    _with_campaign(reference, range(4))
    assert found == inside.review(reference.state, set(reference.state.votes))
    assert {flag.rater for flag in found} == shills and all(flag.reason == "campaign" for flag in found)

    history.state.flags.clear()  # the second search: the two accounts that joined
    _with_campaign(reference, range(4, 6))
    for flag in found:
        history.state.flags[flag.rater]["campaign"] = reference.state.flags[flag.rater]["campaign"] = flag.evidence
    second = beside.prepare(history.state, later)
    assert second is not None
    again = beside.decide(second)
    assert again == inside.review(reference.state, later) and {flag.rater for flag in again} == later


def test_the_consensus_without_the_condemned_is_the_snapshot_taken_after_their_flags() -> None:
    """The round's consensus learns without the raters its campaign search condemned: its snapshot narrowed by them
    equals the one ``prepare`` takes once they are flagged, answers only they voted on left out."""
    history = build_history(SMALL)
    consensus = Pipeline(FilterSettings()).consensus
    raters = set(history.state.votes)
    snapshot = consensus.prepare(history.state, raters)
    assert snapshot is not None
    condemned = {rater for rater, kind in history.kinds.items() if kind == "attacker"} | {(APP, "u0000"), (9, "x")}
    narrowed = snapshot.without(condemned)
    for rater in condemned:
        history.state.flags[rater]["campaign"] = {}
    assert narrowed == consensus.prepare(history.state, raters)
    assert narrowed is not None and len(narrowed.answers) < len(snapshot.answers)
    assert snapshot.without(set()) is snapshot
    assert snapshot.without(set(snapshot.candidates)) is None
    assert consensus.prepare(history.state, {(9, "x"), *(r for r in condemned if r[0] == APP)}) is None


def _traffic(build: EventBuilder, app_id: int) -> tuple[list[list[Event]], dict[str, list[str]]]:
    """Three batches: honest raters with a taste and a slow attacker (the consensus's), and a campaign of four
    accounts, half its votes in the first batch; each vote's event id by its user."""
    completions, _, campaign = campaign_traffic(build, app_id, PHRASE)
    batches, events = traffic(build, app_id, lambda quantity, on_topic: quantity, seed=11)
    batches[0] = completions + campaign[:32] + batches[0]
    batches[1] += campaign[32:48]
    batches[2] += campaign[48:]
    for vote in campaign:
        assert isinstance(vote, ThumbsEvent)
        events.setdefault(vote.user_id, []).append(vote.event_id)
    return batches, events


Outcome = tuple[dict[str, list[list[str]]], list[tuple[str, str, dict[str, Any] | None]]]


def _outcome(sessions: sessionmaker[Session], app_id: int, events: dict[str, list[str]]) -> Outcome:
    """Each user's verdicts in the order of their votes, and the raters flagged: the reason, and a campaign's
    evidence, its accounts without their app (a consensus flag's counts depend on which batch's state its search
    read)."""
    got = verdicts(sessions)
    with sessions() as session:
        rows = session.scalars(select(FlaggedRater).where(FlaggedRater.app_id == app_id))
        flagged = sorted((f.user_id, f.reason, {**f.evidence, "accounts": [a.split(":", 1)[1] for a in
                                                                           f.evidence["accounts"]]}
                          if f.reason == "campaign" else None) for f in rows)
    return {user: [got[e] for e in ids] for user, ids in events.items()}, flagged


def test_searches_held_beside_the_stream_end_with_the_verdicts_of_searches_inside_every_batch(
        sessions: sessionmaker[Session], app_id: int, db_url: str, make_app: Callable[[str], int],
        build: EventBuilder) -> None:
    """The same traffic to two apps: one pipeline searches inside every batch, the other's searches are held back
    while its batches commit (nobody flagged meanwhile), then run when the stream goes quiet. The same raters are
    flagged for the same reasons and the same votes end in quarantine (in the second, by a retroactive move)."""
    settings = {"bot_min_votes": 1000, "velocity_user_max": 1000}
    inside = Pipeline(filter_settings(**settings))
    batches, events = _traffic(build, app_id)
    for batch in batches:
        store(sessions, inside, batch)
    expected = _outcome(sessions, app_id, events)

    other = make_app(db_url)
    beside = Pipeline(filter_settings(**settings, search_wait_s=0))
    release, runs = held(beside.campaigns)  # and so each round of searches
    batches, moved = _traffic(build, other)
    for batch in batches:
        store(sessions, beside, batch)  # would block here if the campaign search ran inside the batch
    meanwhile = _outcome(sessions, other, moved)
    assert all(v == [] for vs in meanwhile[0].values() for v in vs) and meanwhile[1] == [] and runs == []
    release.set()
    with transaction(sessions) as session:
        assert beside.catch_up(session)  # the quiet stream waits for the round, and the one queued behind it
    assert len(runs) == 2
    assert _outcome(sessions, other, moved) == expected

    verdict, flagged = expected  # and they are the right ones
    assert [(user, reason) for user, reason, _ in flagged] == sorted(
        [(f"shill{s}", "campaign") for s in range(4)] + [("attacker", "against_consensus")])
    assert all(v == ["campaign"] for s in range(4) for v in verdict[f"shill{s}"])
    assert all(v == ["against_consensus"] for v in verdict["attacker"])
    assert not any(v for user, vs in verdict.items() if user != "attacker" and not user.startswith("shill") for v in vs)


def test_a_later_batch_stores_the_flags_of_a_round_that_finished(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(bot_min_votes=1000, velocity_user_max=1000, search_wait_s=0))
    release, runs = held(pipeline.campaigns)
    completions, honest, campaign = campaign_traffic(build, app_id, PHRASE)
    store(sessions, pipeline, completions + honest + campaign)  # the round starts after this batch
    assert not any(verdicts(sessions)[e.event_id] for e in campaign)
    release.set()
    assert not pipeline._history_searches.idle and pipeline._history_searches.wait(60) and len(runs) == 1
    store(sessions, pipeline, [])  # the next batch, even an empty one, stores what it found
    got = verdicts(sessions)
    assert all(got[e.event_id] == ["campaign"] for e in campaign)
    assert not any(got[e.event_id] for e in honest)
