"""The filter pipeline: every filter composed into the store's judge, and its state rebuilt on start.

Per event, every per-vote filter gives its objections (all of them, so a quarantined event
carries every reason code and its evidence); an event nobody objects to is accepted with
its rater's reliability weight. After each micro-batch, inside the batch's transaction:

1. the GX contract suite validates the batch; each failed expectation is a ``batch_alerts`` row;
2. the history filters review the raters who voted: bots after every batch; the searches that
   look at the whole history (campaigns, consensus, the reliability estimate of step 4) at most
   every ``search_interval_s`` (the raters who voted meanwhile are remembered and reviewed
   then), and whenever the stream goes quiet (``catch_up``, called by the worker on an empty
   poll). The campaign and consensus searches, the costliest, run in a thread on a snapshot of
   what they read (``background.py``), in that order: a batch waits ``search_wait_s`` for them,
   then commits without them, and a later batch (or the next quiet poll, which waits for them)
   stores their flags;
3. a newly flagged rater is stored in ``flagged_raters`` and their accepted votes move to
   quarantine (retroactive quarantine: insert-if-absent into ``quarantine`` and delete from
   ``feedback`` in the same transaction, so an event is never in both or neither); their
   later votes are quarantined on arrival. Events ops released are exempt;
4. reliability is re-estimated without flagged raters, and changed weights are written onto
   the raters' accepted votes.

State is in memory and rebuilt from the database on start (``rebuild``): the stored votes
(``feedback`` and ``quarantine``), the answers they name, and the sticky flags. A failed
batch discards it (the worker rebuilds), so a rolled-back batch never lingers in memory.

Machine feedback (``source`` other than human: an AI judge's verdicts, a constitutional
revision's preference for the revision; ``feedback.ai``) passes the data's own
checks only (contract, integrity, duplicates), against a history of its own (``machine``), and is
accepted at its source's weight (``FilterSettings.machine_weight``). The other filters are about
people and would misjudge a machine: a judge votes faster than anyone reads and hundreds of
times a minute (timing, velocity), may say "a" more often than 95 % of the time on a skewed set of
pairs (bots). And a machine must not sway what they learn about people either: its votes never
enter the history the consensus, reliability and campaign searches read, it is never a rater
they weigh, and their flags and weights move human votes only. An answer has no age limit for a
machine: it labels stored history, and its verdict is not a stale replay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from feedback.db.id_lists import id_chunks
from feedback.db.models import AdminAction, BatchAlert, Completion, Feedback, FlaggedRater, Quarantine
from feedback.events import EVENT_ADAPTER, HUMAN, CompletionEvent, Event, FeedbackEvent, PairwiseEvent, ThumbsEvent
from feedback.filters.background import Search, Searches
from feedback.filters.base import Answer, Filter, FilterState, Finding, Flag, HistoryFilter, Rater, Vote
from feedback.filters.bots import BotFilter
from feedback.filters.campaigns import CampaignFilter
from feedback.filters.consensus import ConsensusFilter
from feedback.filters.contract import BatchRow, ContractFilter, ContractSuite
from feedback.filters.duplicates import DuplicateFilter
from feedback.filters.integrity import IntegrityFilter
from feedback.filters.reliability import ReliabilityFilter, RewardScores
from feedback.filters.replicas import SearchLease, Tail, read_flags
from feedback.filters.settings import FilterSettings
from feedback.filters.text_features import prompt_text
from feedback.filters.timing import TimingFilter
from feedback.filters.velocity import VelocityFilter
from feedback.store import (
    RELEASE_ACTION,
    UNSTORABLE,
    Verdict,
    as_utc,
    event_from_feedback,
    insert_ignoring_conflicts,
    prompt_hash,
    quarantine_row,
)

OBJECTIONS = Counter("flywheel_filter_objections", "Objections raised to feedback events, by filter and reason code.",
                     ["filter", "reason"])
FLAGGED = Counter("flywheel_filter_flagged_raters", "Raters flagged by a history filter.", ["filter", "reason"])
RETROACTIVE = Counter("flywheel_filter_retroactive_quarantine",
                      "Accepted votes moved to quarantine because their rater was flagged.", ["reason"])
BATCH_ALERTS = Counter("flywheel_filter_batch_alerts", "Micro-batches failing a contract expectation.", ["check"])

_UNKNOWN = {"unknown_response", "unknown_pair"}


def vote_of(event: FeedbackEvent) -> Vote:
    target: str
    label: str
    if isinstance(event, ThumbsEvent):
        target, label = event.response_id, event.rating
    else:
        target, label = event.pair_id, event.choice
    return Vote(event.event_id, (event.app_id, event.user_id), event.type, target, label, event.comment,
                event.created_at)


def _answer(row: Completion | CompletionEvent, prompt: str) -> Answer:
    return Answer(row.response_id, row.pair_id, row.app_id, prompt, row.answer, as_utc(row.created_at),
                  prompt_text(row.messages))


class Pipeline:
    """The judge ``store_batch`` calls: per-vote filters, then after each batch the history filters that are due."""

    def __init__(self, settings: FilterSettings | None = None, reward_scores: RewardScores | None = None,
                 lease: SearchLease | None = None) -> None:
        """``lease``: this is one of several worker replicas (``replicas.py``); None: the only process storing votes."""
        s = self.settings = settings or FilterSettings()
        self.lease = lease
        self._tails = None if lease is None else (Tail(Feedback.id), Tail(Quarantine.id), Tail(FlaggedRater.id))
        self._synced: set[Rater] = set()  # raters with votes other replicas stored, not yet reviewed for bots
        self.state = FilterState()
        self.machine = FilterState()  # the votes of machine sources: a history of their own (see the module doc)
        self.reliability = ReliabilityFilter.from_settings(s, reward_scores=reward_scores)
        # With the filters off (an ablation), only the data's own checks remain: it decodes, names an
        # answer the caller's app was served, and is the rater's first vote on it.
        checks: list[Filter] = [ContractFilter.from_settings(s), IntegrityFilter.from_settings(s), DuplicateFilter()]
        self.filters: list[Filter] = checks if not s.enabled else [
            *checks,
            VelocityFilter.from_settings(s),
            TimingFilter.from_settings(s),
            self.reliability,
        ]
        self.machine_checks: list[Filter] = [ContractFilter.from_settings(s), IntegrityFilter(max_age_s=math.inf),
                                             DuplicateFilter()]
        self.bots = BotFilter.from_settings(s)
        self.campaigns = CampaignFilter.from_settings(s)
        self.consensus = ConsensusFilter.from_settings(s, reward_scores=reward_scores)
        self.suite = ContractSuite.from_settings(s)
        history: tuple[HistoryFilter, ...] = (self.bots, self.campaigns, self.consensus)
        self._flag_filter = {r: f.name for f in history for r in f.reasons}
        self._rows: list[BatchRow] = []
        self._wanted: list[tuple[FilterState, set[str]]] = []
        self._touched: set[Rater] = set()
        self._search_due: set[Rater] = set()
        # The history-wide searches beside the stream, in the order a search inside the batch runs them: the
        # consensus is learnt from the raters still trusted, without those the campaign search condemns. (The filters'
        # methods are looked up at each call, so a test may hold a search back by replacing one.)
        self._history_searches = Searches([
            Search(lambda raters: self.campaigns.prepare(self.state, raters),
                   lambda snapshot: self.campaigns.decide(snapshot),
                   # as the campaign search does, it skips raters already flagged for a campaign
                   still_new=lambda flag: flag.reason not in self.state.flags.get(flag.rater, {})),
            Search(lambda raters: self.consensus.prepare(self.state, raters),
                   lambda snapshot: self.consensus.decide(snapshot),
                   # the consensus models only unflagged raters: it condemns nobody flagged
                   still_new=lambda flag: not self.state.flags.get(flag.rater),
                   without=lambda snapshot, raters: snapshot.without(raters)),
        ], "history-search")
        self._searched_at = -math.inf

    # -- start-up -------------------------------------------------------------------------------

    @classmethod
    def rebuild(cls, session: Session, settings: FilterSettings | None = None,
                reward_scores: RewardScores | None = None, lease: SearchLease | None = None) -> Pipeline:
        """A pipeline whose state is what an uninterrupted run would hold after the stored events."""
        pipeline = cls(settings, reward_scores, lease)
        state = pipeline.state
        stored = [(event_from_feedback(row), True) for row in session.scalars(select(Feedback))]
        quarantined = session.execute(select(Quarantine.payload, Quarantine.reasons))
        # An unstorable event never reached the filters (and may be a completion): it is no vote of anyone's.
        stored += [(_decode_feedback(payload), False) for payload, reasons in quarantined
                   if UNSTORABLE not in reasons]
        pipeline._load_human_answers(session, [event for event, _ in stored])
        for flag in session.scalars(select(FlaggedRater)):
            state.flags[(flag.app_id, flag.user_id)][flag.reason] = flag.evidence
        pipeline._remember(stored)
        if pipeline.settings.enabled:
            pipeline.reliability.review(state)  # restores the weights
        # A search the previous run deferred died with it: the first search reviews every rater.
        pipeline._search_due = set(state.votes)
        return pipeline

    def _load_answers(self, session: Session, state: FilterState, responses: set[str], pairs: set[str]) -> None:
        for column, ids in ((Completion.response_id, responses), (Completion.pair_id, pairs)):
            for chunk in id_chunks(ids):
                for row in session.scalars(select(Completion).where(column.in_(chunk))):
                    state.add_answer(_answer(row, row.prompt_hash))

    def _load_human_answers(self, session: Session, stored: Sequence[FeedbackEvent]) -> None:
        """The answers stored human votes name, for the history filters (machine votes need theirs only when a new
        one is judged: ``begin`` loads them)."""
        human = [event for event in stored if event.source == HUMAN]
        self._load_answers(session, self.state,
                           {e.response_id for e in human if isinstance(e, ThumbsEvent)} - self.state.answers.keys(),
                           {e.pair_id for e in human if isinstance(e, PairwiseEvent)} - self.state.pairs.keys())

    def _remember(self, stored: Sequence[tuple[FeedbackEvent, bool]]) -> set[Rater]:
        """Record stored votes (and whether they were accepted), oldest first, in their source's history; the human
        raters among them."""
        humans: set[Rater] = set()
        for event, accepted in sorted(stored, key=lambda item: (item[0].created_at, item[0].event_id)):
            vote = vote_of(event)
            self._history_of(event).record(vote, accepted)
            if event.source == HUMAN:
                humans.add(vote.rater)
        return humans

    def _history_of(self, event: FeedbackEvent) -> FilterState:
        return self.state if event.source == HUMAN else self.machine

    def _holder(self, key: tuple[int, str]) -> FilterState | None:
        """The history that recorded the event (app id, event id), if any."""
        return next((state for state in (self.state, self.machine) if key in state.stored), None)

    # -- the BatchJudge protocol of feedback.store --------------------------------------------

    def begin(self, session: Session, batch: Sequence[Event]) -> None:
        """Load, in two queries per history, the answers this batch's feedback names (one lookup per event would
        dominate): into the history of the votes that name them."""
        self._rows, self._touched = [], set()
        self._sync(session)
        self._wanted = []
        for state in (self.state, self.machine):
            named = [e for e in batch if not isinstance(e, CompletionEvent) and self._history_of(e) is state]
            responses = {e.response_id for e in named if isinstance(e, ThumbsEvent)} - state.answers.keys()
            pairs = {e.pair_id for e in named if isinstance(e, PairwiseEvent)} - state.pairs.keys()
            self._wanted.append((state, responses | pairs))
            self._load_answers(session, state, responses, pairs)

    def completion_stored(self, event: CompletionEvent) -> None:
        for state, wanted in self._wanted:
            if event.response_id in wanted or event.pair_id in wanted:
                state.add_answer(_answer(event, prompt_hash(event.messages)))

    def __call__(self, session: Session, event: FeedbackEvent) -> Verdict:
        vote = vote_of(event)
        if event.source != HUMAN:  # the data's own checks, on the machines' own history (see the module doc)
            findings = [(f.name, finding) for f in self.machine_checks for finding in f.judge(self.machine, vote)]
            self.machine.record(vote, accepted=not findings)
            return _verdict(findings, self.settings.machine_weight(event.source))
        findings = [(f.name, finding) for f in self.filters for finding in f.judge(self.state, vote)]
        findings += [(self._flag_filter[reason], Finding(reason, evidence))
                     for reason, evidence in self.state.flags.get(vote.rater, {}).items()]
        self.state.record(vote, accepted=not findings)
        self._touched.add(vote.rater)
        unknown = any(f.reason in _UNKNOWN for _, f in findings)
        self._rows.append(BatchRow(vote.label, vote.rater[1], unknown, vote.created_at))
        return _verdict(findings, self.state.weight(vote.rater))

    def end(self, session: Session) -> None:
        self._record_alerts(session)
        if not self.settings.enabled:
            return
        self._search_due |= self._touched
        if self._searches():
            self._apply(session, self.bots.review(self.state, self._touched | self._synced))
            self._synced = set()
        if time.monotonic() - self._searched_at >= self.settings.search_interval_s:
            self._search(session, self.settings.search_wait_s)
        elif self._collect(session, 0):
            self._reweigh(session)

    def catch_up(self, session: Session) -> bool:
        """Run a search deferred by ``search_interval_s``, and wait for the searches still running or queued behind
        them; False if there was nothing of either.

        The worker calls it when a poll comes back empty, so a quiet stream gets its verdicts
        within a poll timeout (and a running search's time) instead of waiting for the next batch.
        """
        if not self.settings.enabled:
            return False
        self._sync(session)
        if self._search_due:
            if self._searches():
                self._apply(session, self.bots.review(self.state, self._synced))
                self._synced = set()
            self._search(session, None)
            return True
        if self._history_searches.idle:
            return False
        self._run_searches(session, None)
        self._reweigh(session)
        return True

    # -- replicas (see replicas.py) --------------------------------------------------------------

    def _searches(self) -> bool:
        """Whether this process runs the searches that condemn raters and write weights: the only one, or the
        replica holding the search lease."""
        return self.lease is None or self.lease.held()

    def _sync(self, session: Session) -> None:
        """Read into the state what other replicas stored since the last look: votes, moves, releases, flags."""
        if self._tails is None:
            return
        feedback, quarantine, flags = self._tails
        state = self.state
        fresh: list[tuple[FeedbackEvent, bool]] = []
        new_ids: set[int] = set()
        for row_id, app_id, event_id in feedback.read(session, (Feedback.app_id, Feedback.event_id)):
            holder = self._holder((app_id, event_id))
            if holder is not None:
                holder.accepted.add((app_id, event_id))  # ops released it (or this process stored it)
            else:
                new_ids.add(row_id)
        if new_ids:  # read whole only the rows of other processes, in one range (they are the newest)
            rows = session.scalars(select(Feedback).where(Feedback.id.between(min(new_ids), max(new_ids))))
            fresh += [(event_from_feedback(row), True) for row in rows if row.id in new_ids]
        for _, app_id, event_id, payload, reasons in quarantine.read(
                session, (Quarantine.app_id, Quarantine.event_id, Quarantine.payload, Quarantine.reasons)):
            holder = self._holder((app_id, event_id))
            if holder is not None:
                holder.accepted.discard((app_id, event_id))  # moved to quarantine by the searcher
            elif UNSTORABLE not in reasons:  # an unstorable event never reached the filters
                fresh.append((_decode_feedback(payload), False))
        for rater, reason, evidence in read_flags(session, flags):
            state.flags[rater][reason] = evidence
        self._load_human_answers(session, [event for event, _ in fresh])
        self._synced |= self._remember(fresh)
        self._search_due |= self._synced
        late = {(e.app_id, e.user_id) for e, accepted in fresh
                if accepted and e.source == HUMAN and state.flags.get((e.app_id, e.user_id))}
        if late and self._searches():  # accepted by a replica that had not yet read the flag: move them now
            for rater in sorted(late):
                for reason, evidence in state.flags[rater].items():
                    self._quarantine_accepted(session, rater, reason, evidence)

    # -- after the batch ------------------------------------------------------------------------

    def _record_alerts(self, session: Session) -> None:
        if not self._rows:
            return
        stamps = [r.created_at for r in self._rows]
        batch = {"events": len(self._rows), "first_created_at": min(stamps).isoformat(),
                 "last_created_at": max(stamps).isoformat()}
        for alert in self.suite.check(self._rows):
            BATCH_ALERTS.labels(alert["check"]).inc()
            session.add(BatchAlert(check=alert["check"], detail=alert["detail"], batch=batch))

    def _apply(self, session: Session, flags: list[Flag]) -> None:
        """Store each new flag and move the rater's accepted votes (except released ones) to quarantine."""
        for flag in flags:
            app_id, user_id = flag.rater
            self.state.flags[flag.rater][flag.reason] = flag.evidence
            FLAGGED.labels(self._flag_filter[flag.reason], flag.reason).inc()
            row = {"app_id": app_id, "user_id": user_id, "reason": flag.reason, "evidence": flag.evidence}
            insert_ignoring_conflicts(session, FlaggedRater, [row], key=("id",))
            self._quarantine_accepted(session, flag.rater, flag.reason, flag.evidence)

    def _quarantine_accepted(self, session: Session, rater: Rater, reason: str, evidence: dict[str, Any]) -> None:
        """Move a flagged rater's accepted votes (except released ones) to quarantine."""
        app_id, user_id = rater
        rows = list(session.scalars(select(Feedback).where(
            Feedback.app_id == app_id, Feedback.user_id == user_id, Feedback.source == HUMAN,
            Feedback.event_id.not_in(_released(app_id)),
        )))
        moved = [quarantine_row(event_from_feedback(row), Verdict([reason], {reason: {
            **evidence, "retroactive": True, "accepted_weight": row.weight}})) for row in rows]
        insert_ignoring_conflicts(session, Quarantine, moved)
        self.state.accepted.difference_update((r.app_id, r.event_id) for r in rows)
        for chunk in id_chunks(r.event_id for r in rows):
            session.execute(delete(Feedback).where(Feedback.app_id == app_id, Feedback.event_id.in_(chunk)))
        RETROACTIVE.labels(reason).inc(len(rows))

    def _search(self, session: Session, wait: float | None) -> None:
        """The history-wide searches over the raters who voted since the last one: campaigns then consensus (waited
        for ``wait`` seconds, None: however long), then the reliability estimate. A replica without the search
        lease only re-estimates reliability, for its own verdicts and weights, and writes nothing."""
        if self._searches():
            self._history_searches.due |= self._search_due
            self._run_searches(session, wait)
            self._reweigh(session)
        else:
            self.reliability.review(self.state)
        self._search_due = set()
        self._searched_at = time.monotonic()

    def _run_searches(self, session: Session, wait: float | None) -> None:
        """Store the flags of a finished round of searches, start one over the raters due, and wait ``wait`` seconds
        for it. With ``wait`` None (a quiet stream) every round runs to its end, the ones over raters who came due
        while another ran included."""
        self._collect(session, 0)
        self._history_searches.start()
        while self._collect(session, wait) and wait is None and self._history_searches.due:
            self._history_searches.start()

    def _collect(self, session: Session, wait: float | None) -> bool:
        """Store the flags of the running round of searches if it ends within ``wait`` seconds; whether it did.

        Its snapshots may be a few batches old: a rater it condemns is flagged now, and the votes they cast
        since are moved with the others (retroactive quarantine), so a late verdict loses nothing."""
        flags = self._history_searches.collect(wait)
        if flags is None:
            return False
        self._apply(session, flags)
        return True

    def _reweigh(self, session: Session) -> None:
        """Re-estimate reliability (after the flags, so condemned raters no longer sway the consensus) and
        write changed weights onto the raters' accepted votes, so training sees the current estimate."""
        before = dict(self.state.weights)
        self.reliability.review(self.state)
        for rater, weight in sorted(self.state.weights.items()):
            if abs(before.get(rater, 1.0) - weight) < 0.01:
                continue
            session.execute(update(Feedback).where(
                Feedback.app_id == rater[0], Feedback.user_id == rater[1], Feedback.source == HUMAN,
                Feedback.event_id.not_in(_released(rater[0])),
            ).values(weight=weight))


def _verdict(findings: list[tuple[str, Finding]], weight: float) -> Verdict:
    """Accepted at ``weight`` when nobody objected; otherwise every reason, once, with its evidence. Counts each
    objection by filter and reason."""
    for name, finding in findings:
        OBJECTIONS.labels(name, finding.reason).inc()
    if not findings:
        return Verdict(weight=weight)
    reasons = list(dict.fromkeys(f.reason for _, f in findings))
    return Verdict(reasons, {f.reason: f.evidence for _, f in findings})


def _released(app_id: int) -> Any:
    """The event ids of ``app_id`` that ops released (exempt from retroactive quarantine)."""
    return select(AdminAction.target).where(AdminAction.action == RELEASE_ACTION, AdminAction.app_id == app_id)


def _decode_feedback(payload: dict[str, Any]) -> FeedbackEvent:
    event = EVENT_ADAPTER.validate_python(payload)
    assert not isinstance(event, CompletionEvent), "quarantine holds feedback only"
    return event
