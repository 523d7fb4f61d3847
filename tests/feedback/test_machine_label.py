"""``flywheel label``: an AI judge's verdicts on stored pairs, through the real broker, worker, filters and store.

Only the engine is a double (``tests/engine_double.py``): a judge that prefers answers naming
Paris and otherwise always picks the first position (a position bias that both orders cancel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from feedback.ai.batch import Tally, run, to_broker
from feedback.ai.engine import EngineUnavailable
from feedback.ai.label import Pair, Rubric, judge_pair, judge_rater, pairs_to_label, verdict_event_id
from feedback.db.models import Feedback, Quarantine
from feedback.db.session import make_engine, transaction
from feedback.events import CompletionEvent, Event, PairwiseEvent, PairwiseFeedback, decode, encode, utcnow
from feedback.filters import Pipeline
from feedback.filters.replicas import SearchLease
from feedback.producer import EventProducer
from feedback.store import store_batch
from feedback.worker import Worker
from feedback.worker_settings import WorkerSettings
from flywheel.cli.main import app as cli
from flywheel.stack.supervise import free_port
from registry.live import head_to_head, version_numbers
from tests.conftest import EventBuilder
from tests.engine_double import EngineDouble, prefers, shown
from tests.feedback.filtering import after, filter_settings
from tests.feedback.test_kafka import RunningWorker, rows, wait_until

JUDGE = "judge"
FILTERS = filter_settings()


def pair_of(build: EventBuilder, app_id: int, a: str, b: str, **kw: object) -> list[CompletionEvent]:
    first, second = build.pair(app_id)
    return [first.model_copy(update={"answer": a, **kw}), second.model_copy(update={"answer": b, **kw})]


def label(sessions: sessionmaker[Session], double: EngineDouble, send: Callable[[Sequence[Event]], None],
          limit: int = 100) -> Tally:
    """What ``flywheel label`` does, on the engine double."""
    with sessions() as session:
        pairs = pairs_to_label(session, JUDGE, limit)
    rubric = Rubric.load()
    with double.engine() as engine:
        return run(pairs, lambda pair: judge_pair(engine, JUDGE, rubric, pair), send, concurrency=4)


def stored(sessions: sessionmaker[Session]) -> dict[str, tuple[str | None, str, float, str]]:
    """pair id -> (choice, source, weight, user) of every accepted vote."""
    with sessions() as session:
        return {f.pair_id or "": (f.choice, f.source, f.weight, f.user_id) for f in session.scalars(select(Feedback))}


def test_both_orders_cancel_a_position_bias_and_verdicts_go_through_the_worker(
    db_url: str, app_id: int, sessions: sessionmaker[Session], settings: Callable[..., WorkerSettings],
    build: EventBuilder,
) -> None:
    config = settings(database_url=db_url)
    on_a = pair_of(build, app_id, "Paris.", "Lyon.")
    on_b = pair_of(build, app_id, "Marseille.", "It is Paris.")
    neither = pair_of(build, app_id, "Lyon.", "Nice.")
    same = pair_of(build, app_id, "Paris.", "Paris.")  # nothing to judge
    voted = pair_of(build, app_id, "Paris.", "Lille.")  # a person decided it
    human = build.pairwise(app_id, voted[0].pair_id or "", choice="b", user_id="u1", **after(voted[0], 60))
    producer = EventProducer(config)
    asyncio.run(producer.send_many([*on_a, *on_b, *neither, *same, *voted, human]))
    running = RunningWorker(Worker(config, FILTERS))
    try:
        wait_until(lambda: rows(db_url) == {"completions": 10, "feedback": 1, "quarantine": 0})
        double = EngineDouble(prefers("Paris"))

        tally = label(sessions, double, to_broker(producer))

        assert tally.statuses == {"a": 1, "b": 1, "tie": 1} and tally.sent == 3
        wait_until(lambda: rows(db_url)["feedback"] == 4)
    finally:
        running.join()
        producer.close()
    assert running.error is None
    # Each pair was asked in both orders, as Answer 1 and as Answer 2, greedily and held to "1" or "2".
    asked = sorted(shown(body) for body in double.requests)
    assert asked == sorted([("Paris.", "Lyon."), ("Lyon.", "Paris."), ("Marseille.", "It is Paris."),
                            ("It is Paris.", "Marseille."), ("Lyon.", "Nice."), ("Nice.", "Lyon.")])
    assert {(b["model"], b["temperature"], str(b["structured_outputs"])) for b in double.requests} == {
        (JUDGE, 0, "{'choice': ['1', '2']}")}
    votes = stored(sessions)
    rater = judge_rater(JUDGE)
    assert votes == {
        on_a[0].pair_id: ("a", "ai", 0.5, rater),
        on_b[0].pair_id: ("b", "ai", 0.5, rater),
        neither[0].pair_id: ("tie", "ai", 0.5, rater),  # picked position 1 both times: no preference
        voted[0].pair_id: ("b", "human", 1.0, "u1"),
    }
    with sessions() as session:
        comment = session.scalar(select(Feedback.comment).where(Feedback.pair_id == neither[0].pair_id))
    assert comment == f"rubric {Rubric.load().digest}: A shown first -> a, B shown first -> b"


def test_a_rerun_stores_no_verdict_twice(
    db_url: str, app_id: int, sessions: sessionmaker[Session], settings: Callable[..., WorkerSettings],
    build: EventBuilder,
) -> None:
    """Two runs before the worker stored anything send every verdict twice: stored once. A third run finds nothing."""
    config = settings(database_url=db_url)
    pairs = [event for i in range(3) for event in pair_of(build, app_id, f"Paris {i}.", f"Rome {i}.")]
    producer = EventProducer(config)
    asyncio.run(producer.send_many(pairs))
    first = RunningWorker(Worker(config, FILTERS))
    try:
        wait_until(lambda: rows(db_url)["completions"] == 6)
    finally:
        first.join()
    double = EngineDouble(prefers("Paris"))
    try:
        runs = [label(sessions, double, to_broker(producer)) for _ in range(2)]
        second = RunningWorker(Worker(config, FILTERS))  # the same group: it resumes after the completions
        try:
            wait_until(lambda: rows(db_url)["feedback"] == 3)
        finally:
            second.join()
    finally:
        producer.close()
    assert second.error is None and [r.sent for r in runs] == [3, 3] and len(double.requests) == 12
    assert rows(db_url) == {"completions": 6, "feedback": 3, "quarantine": 0}
    assert {choice for choice, *_ in stored(sessions).values()} == {"a"}

    asked = len(double.requests)
    assert label(sessions, double, lambda batch: pytest.fail("nothing should be sent")).statuses == {}
    assert len(double.requests) == asked  # the judge is not even asked again


def test_a_judge_is_no_bot_and_moves_nothing_the_human_filters_learn(
    db_url: str, app_id: int, sessions: sessionmaker[Session], build: EventBuilder,
) -> None:
    """Twelve verdicts at once, all "a": a person voting so would be a bot past the velocity limit. The judge's are
    accepted at the AI weight, stay out of the history the human filters read, and a person whose user id reads
    like the judge's, flagged as a bot, takes none of them along to quarantine."""
    strict = filter_settings(velocity_user_max=3, bot_min_votes=3)
    pipeline = Pipeline(strict)
    completions = [event for i in range(12) for event in pair_of(build, app_id, f"Paris {i}.", f"Rome {i}.")]
    with transaction(sessions) as session:
        store_batch(session, completions, pipeline)
    judged: list[Event] = []

    label(sessions, EngineDouble(prefers("Paris")), judged.extend)
    with transaction(sessions) as session:
        result = store_batch(session, judged, pipeline)

    assert result.accepted == 12 and result.quarantined == 0
    rater = (app_id, judge_rater(JUDGE))
    assert rater not in pipeline.state.votes and len(pipeline.machine.votes[rater]) == 12
    impostor = [event for i in range(4) for event in pair_of(build, app_id, f"Oslo {i}.", f"Bern {i}.")]
    votes = [build.pairwise(app_id, impostor[i].pair_id or "", user_id=judge_rater(JUDGE), **after(impostor[i], 60))
             for i in range(0, 8, 2)]
    with transaction(sessions) as session:
        store_batch(session, [*impostor, *votes], pipeline)  # over the rate limit, then flagged a bot: all held
    with sessions() as session:
        kept = session.scalars(select(Feedback.source).where(Feedback.user_id == judge_rater(JUDGE))).all()
        held = session.scalars(select(Quarantine.event_id)).all()
    assert kept == ["ai"] * 12 and set(held) == {v.event_id for v in votes}

    # A restarted worker rebuilds the same split, and the judge's second vote on a pair (another id) is a duplicate.
    with sessions() as session:
        rebuilt = Pipeline.rebuild(session, strict)
    assert {v.event_id for v in rebuilt.state.votes[rater]} == {v.event_id for v in votes}  # the person's only
    assert len(rebuilt.machine.votes[rater]) == 12
    again = judged[0]
    assert isinstance(again, PairwiseEvent)
    with transaction(sessions) as session:
        result = store_batch(session, [again.model_copy(update={"event_id": "ai-again"})], rebuilt)
    assert result.quarantined == 1
    with sessions() as session:
        reasons = session.scalar(select(Quarantine.reasons).where(Quarantine.event_id == "ai-again"))
    assert reasons == ["duplicate_vote"]


def test_ai_verdicts_are_no_users_opinion_in_the_live_numbers(
    db_url: str, app_id: int, sessions: sessionmaker[Session], build: EventBuilder,
) -> None:
    """A canary is judged by its users: the judge's picks between versions count in no live number."""
    pipeline = Pipeline(FILTERS)
    champion, canary = pair_of(build, app_id, "Paris.", "Rome.")
    with transaction(sessions) as session:
        store_batch(session, [champion, canary.model_copy(update={"model_version": "2"})], pipeline)
    judged: list[Event] = []
    label(sessions, EngineDouble(prefers("Paris")), judged.extend)
    with transaction(sessions) as session:
        assert store_batch(session, judged, pipeline).accepted == 1
    with sessions() as session:
        assert head_to_head(session) == {}
        assert version_numbers(session)["1"].thumbs_up.trials == 0


def test_engine_errors_say_what_to_do(db_url: str, app_id: int, sessions: sessionmaker[Session],
                                      build: EventBuilder) -> None:
    double = EngineDouble(prefers("Paris"), models=("flywheel-policy-base",))
    served = "does not serve 'judge'; it serves flywheel-policy-base"
    with double.engine() as engine, pytest.raises(EngineUnavailable, match=served):
        engine.require(JUDGE)
    with double.engine() as engine, pytest.raises(EngineUnavailable, match="404"):
        judge_pair(engine, JUDGE, Rubric.load(), Pair("pair_x", app_id, (), "A.", "B."))

    with transaction(sessions) as session:
        store_batch(session, pair_of(build, app_id, "Paris.", "Rome."), Pipeline(FILTERS))
    port = free_port()  # nothing listens there
    result = CliRunner().invoke(cli, ["label", "--judge", JUDGE], env={
        "FLYWHEEL_DATABASE_URL": db_url, "FLYWHEEL_ENGINE_URL": f"http://127.0.0.1:{port}"})
    assert result.exit_code == 1
    assert f"the engine at http://127.0.0.1:{port} is unreachable" in " ".join(result.output.split())


def test_apps_cannot_send_machine_feedback_and_old_workers_read_human_votes(build: EventBuilder) -> None:
    """The gateway's request model forbids ``source``; a human vote is encoded without it (a worker of the previous
    release forbids unknown fields), a machine's with it, and both decode to what was sent."""
    with pytest.raises(ValueError, match="source"):
        PairwiseFeedback.model_validate({"pair_id": "pair_" + "0" * 32, "choice": "a", "user_id": "u",
                                         "source": "ai"})
    human = build.pairwise(1, "pair_" + "0" * 32)
    machine = human.model_copy(update={"source": "ai", "created_at": utcnow() - timedelta(days=30)})
    assert b'"source"' not in encode(human) and b'"source":"ai"' in encode(machine)
    assert decode(encode(human)) == human and decode(encode(machine)) == machine
    assert verdict_event_id(JUDGE, "pair_x") == verdict_event_id(JUDGE, "pair_x") != verdict_event_id("j2", "pair_x")


def test_a_replica_reads_the_judges_votes_into_the_machines_history(
    db_url: str, app_id: int, sessions: sessionmaker[Session], build: EventBuilder,
) -> None:
    """Two worker replicas: the one that did not store the verdicts reads them from the store into its machine
    history (not the human one), and judges the judge's second vote on a pair a duplicate."""
    engine = make_engine(db_url)
    leases = [SearchLease(engine), SearchLease(engine)]
    storing, other = (Pipeline(FILTERS, lease=lease) for lease in leases)
    try:
        with transaction(sessions) as session:
            store_batch(session, [e for i in range(3) for e in pair_of(build, app_id, f"Paris {i}.", f"Rome {i}.")],
                        storing)
        judged: list[Event] = []
        label(sessions, EngineDouble(prefers("Paris")), judged.extend)
        with transaction(sessions) as session:
            assert store_batch(session, judged, storing).accepted == 3
        again = judged[0]
        assert isinstance(again, PairwiseEvent)

        with transaction(sessions) as session:
            result = store_batch(session, [again.model_copy(update={"event_id": "ai-again"})], other)

        rater = (app_id, judge_rater(JUDGE))
        assert rater not in other.state.votes and len(other.machine.votes[rater]) == 4  # 3 read, 1 judged here
        assert result.quarantined == 1
    finally:
        for lease in leases:
            lease.close()
        engine.dispose()
