"""``flywheel constitution``: revisions of stored answers become preference pairs, through the real broker, worker
and store; only the engine is a double (``tests/engine_double.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from feedback.ai.batch import Outcome, Send, Tally, run, to_broker
from feedback.ai.constitution import (
    RevisionIds,
    answers_to_revise,
    load_principles,
    pick,
    revise,
)
from feedback.ai.engine import EngineUnavailable
from feedback.ai.label import pairs_to_label
from feedback.db.models import Completion, Feedback
from feedback.events import CONSTITUTION_VERSION, ChatMessage, Event
from feedback.producer import EventProducer
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from flywheel.cli.main import app as cli
from registry.live import version_numbers
from tests.conftest import EventBuilder
from tests.engine_double import EngineDouble
from tests.feedback.filtering import filter_settings
from tests.feedback.test_kafka import RunningWorker, rows, wait_until

MODEL = "judge"
CRITIQUE = "It leaves out what the user asked."
# original answer -> (revision, finish reason); an answer naming Brest makes the engine refuse the request
REVISIONS = {
    "Paris.": ("Paris is the capital of France.", "stop"),
    "Paris?": ("The capital of France is Paris.", "stop"),
    "Rome.": ("Rome is the capital of Italy.", "stop"),
    "Milan.": ("Rome, not Milan, is the capital of Italy.", "stop"),
    "Lyon.": ("  Lyon.\n", "stop"),  # the original again
    "Nice.": ("", "stop"),
    "Lille.": ("Lille is a city in the north of France and", "length"),
}


def reply(body: dict[str, Any]) -> tuple[str, str]:
    """A critique when asked for one (the request follows the answer), else the revision of the original answer."""
    turns = body["messages"]
    revising = turns[-2] == {"role": "assistant", "content": CRITIQUE}
    return REVISIONS[turns[-4 if revising else -2]["content"]] if revising else (CRITIQUE, "stop")


class RefusingDouble(EngineDouble):
    """Answers 400 to a conversation that names Brest, as vLLM does to a request it cannot serve."""

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if b"Brest." in request.content:
            return httpx.Response(400, json={"error": {"message": "maximum context length exceeded", "code": 400}})
        return super()._handle(request)


def revise_all(sessions: sessionmaker[Session], double: EngineDouble, send: Send) -> Tally:
    """What ``flywheel constitution`` does, on the engine double."""
    principles = load_principles()
    with sessions() as session:
        originals = answers_to_revise(session, 100)
    with double.engine() as engine:
        return run(originals, lambda original: revise(engine, MODEL, principles, original, 64), send, concurrency=3)


def asking(question: str) -> dict[str, Any]:
    return {"messages": [ChatMessage(role="user", content=question)]}


FRANCE = [{"role": "user", "content": "Capital of France?"}]


def test_revisions_become_preference_pairs_once_and_bad_ones_are_skipped(
    db_url: str, app_id: int, sessions: sessionmaker[Session], settings: Callable[..., WorkerSettings],
    build: EventBuilder,
) -> None:
    """One answer per prompt a run, newest first: the older answer to a prompt waits for the second run, which
    revises no answer twice and tries the skipped ones again."""
    config = settings(database_url=db_url)
    older = build.completion(app_id, answer="Paris?", **asking("Capital of France?"))
    served = [older, *(build.completion(app_id, answer=answer, **asking(f"About {answer}"))
                       for answer in ("Lyon.", "Nice.", "Lille.", "Brest."))]
    newest = build.completion(app_id, answer="Paris.", **asking("Capital of France?"))
    side_a, side_b = build.pair(app_id)  # either side of a served pair is an answer too
    served += [newest, side_a.model_copy(update={"answer": "Milan.", **asking("Capital of Italy?")}),
               side_b.model_copy(update={"answer": "Rome.", **asking("Capital of Italy?")})]
    producer = EventProducer(config)
    asyncio.run(producer.send_many(served))
    running = RunningWorker(Worker(config, filter_settings()))
    try:
        wait_until(lambda: rows(db_url)["completions"] == 8)
        double = RefusingDouble(reply, models=(MODEL,))

        first = revise_all(sessions, double, to_broker(producer))

        assert first.statuses == {"revised": 2, "unchanged": 1, "empty": 1, "cut off": 1, "failed": 1}
        assert first.sent == 6 and "400" in first.errors[0]
        wait_until(lambda: rows(db_url) == {"completions": 12, "feedback": 2, "quarantine": 0})
        second = revise_all(sessions, double, to_broker(producer))
        assert second.statuses == first.statuses  # "Paris?" and "Milan." now; the skipped ones again
        wait_until(lambda: rows(db_url) == {"completions": 16, "feedback": 4, "quarantine": 0})
    finally:
        running.join()
        producer.close()
    assert running.error is None

    ids = RevisionIds.of(newest.response_id)
    with sessions() as session:
        vote = session.scalars(select(Feedback).where(Feedback.pair_id == ids.pair_id)).one()
        sides = {c.response_id[-1]: c for c in session.scalars(select(Completion).where(
            Completion.pair_id == ids.pair_id))}
        judged = [p.pair_id for p in pairs_to_label(session, MODEL, 100)]
        assert CONSTITUTION_VERSION not in version_numbers(session)  # nobody was served them
    assert judged == [side_a.pair_id]  # a judge is asked about served pairs only
    revised, copy = sides[ids.revised_side], sides["b" if ids.revised_side == "a" else "a"]
    assert (vote.choice, vote.source, vote.weight, vote.user_id) == (ids.revised_side, "constitution", 0.5,
                                                                     f"constitution:{MODEL}")
    principle = pick(load_principles(), newest.response_id)
    assert vote.comment == f"principle {principle.name}"
    assert (revised.answer, copy.answer) == ("Paris is the capital of France.", "Paris.")
    assert revised.messages == copy.messages == FRANCE
    assert {c.model_version for c in sides.values()} == {CONSTITUTION_VERSION} and revised.user_id is None
    assert revised.params["constitution"] == {
        "original_response_id": newest.response_id, "original_model_version": "1", "principle": principle.name,
        "model": MODEL, "role": "revision", "critique": CRITIQUE}
    # The critique came after the original answer and the principle's request, the revision after the critique.
    assert [*FRANCE, {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": principle.critique}, {"role": "assistant", "content": CRITIQUE},
            {"role": "user", "content": principle.revision}] in [b["messages"] for b in double.requests]


def test_the_shipped_principles_and_a_bad_file(tmp_path: Path) -> None:
    principles = load_principles()
    assert [p.name for p in principles] == ["harmless", "honest", "no-made-up-links", "answer-the-question"]
    assert {pick(principles, f"resp_{i:032x}").name for i in range(40)} == {p.name for p in principles}
    bad = tmp_path / "principles.yaml"
    bad.write_text("- name: honest\n  critique: Is it true?\n")  # no revision request
    with pytest.raises(ValueError, match="revision"):
        load_principles(bad)
    result = CliRunner().invoke(cli, ["constitution", "--principles", str(bad)])
    assert result.exit_code == 1 and "not a list of principles" in " ".join(result.output.split())


def test_an_unreachable_engine_ends_the_run_keeping_what_finished() -> None:
    """``run`` sends the events of finished items before the error ends it (a re-run goes on from there)."""
    sent: list[Event] = []
    events = EventBuilder()

    def work(i: int) -> Outcome:
        if i == 3:
            raise EngineUnavailable("the engine at http://x is unreachable")
        return Outcome("revised", (events.completion(1),))

    with pytest.raises(EngineUnavailable):
        run(list(range(4)), work, sent.extend, concurrency=1)
    assert len(sent) == 3
