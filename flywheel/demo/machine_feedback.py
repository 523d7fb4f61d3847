"""Machine feedback in a demo round: what ``flywheel label`` and ``flywheel constitution`` add, sent the same way.

With ``--ai-labels`` the base model judges, in both orders, the round's pairs that no user voted on (with
``--vote-share`` below 1 users leave many answers unvoted, as they do in most apps); with
``--constitution N`` it critiques and revises N of the round's answers against the shipped principles. Both
go through the broker and the worker like users' votes, so the round trains on what the worker stored, and
each call returns only once the worker has stored (or quarantined) every event it sent: the training round
that follows must see them all.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from feedback.ai.batch import Outcome, run_to_broker
from feedback.ai.constitution import answers_to_revise, load_principles, revise
from feedback.ai.engine import Engine
from feedback.ai.label import Rubric, judge_pair, pairs_to_label
from feedback.store import known_events
from serving.settings import ServingSettings

T = TypeVar("T")
REVISION_MAX_TOKENS = 256  # flywheel constitution's default: a critique or revision cut off there is not used
STORE_WAIT_SECONDS = 180.0


class MachineFeedback:
    """The demo stack's engine, broker and store, for machine feedback from the base model it serves."""

    def __init__(self, settings: ServingSettings, sessions: sessionmaker[Session],
                 progress: Callable[[str, int, int], None]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.model = settings.base_engine_model
        self.progress = progress  # (stage, done, total), as the demo's display takes it

    def label_unvoted(self) -> Counter[str]:
        """The judge's verdicts (a, b, tie, unparsed, failed) on every stored pair no user voted on."""
        with self.sessions() as session:
            pairs = pairs_to_label(session, self.model, limit=1_000_000)
        rubric = Rubric.load()
        return self._run("ai-labels", pairs, lambda engine, pair: judge_pair(engine, self.model, rubric, pair))

    def revise(self, limit: int) -> Counter[str]:
        """Revisions (revised, unchanged, empty, cut off, failed) of up to ``limit`` of the newest answers."""
        with self.sessions() as session:
            originals = answers_to_revise(session, limit)
        principles = load_principles()
        return self._run("revisions", originals,
                         lambda engine, original: revise(engine, self.model, principles, original, REVISION_MAX_TOKENS))

    def _run(self, stage: str, items: Sequence[T], work: Callable[[Engine, T], Outcome]) -> Counter[str]:
        sent: set[str] = set()
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            self.progress(stage, done, len(items))

        with Engine(self.settings.resolved_engine_url, self.settings.engine_timeout) as engine:
            tally = run_to_broker(items, work, engine, self.settings, advance=advance,
                                  on_sent=lambda batch: sent.update(event.event_id for event in batch))
        self._wait_stored(sent)
        return tally.statuses

    def _wait_stored(self, event_ids: set[str]) -> None:
        deadline = time.monotonic() + STORE_WAIT_SECONDS
        while True:
            with self.sessions() as session:
                stored = {event_id for _, event_id in known_events(session, event_ids)}
            if stored >= event_ids:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker stored {len(stored)} of the {len(event_ids)} machine-feedback events "
                                   f"in {STORE_WAIT_SECONDS:.0f} s; is it running? (its log is in the stack's logs)")
            time.sleep(1.0)
