"""Machine feedback over many items: the engine's requests in parallel, the events to the broker as they come.

The engine serves concurrent requests several times faster than one at a time (docs: 141 against
23 tokens/s on 2 cores), so items run ``concurrency`` at a time. Events are sent in chunks while
the run goes on, so an interrupted run keeps what it finished, and a re-run, whose event ids are
the same, neither redoes it nor stores it twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TypeVar

from feedback.ai.engine import Engine, EngineError
from feedback.events import Event, encode
from feedback.producer import EventProducer
from feedback.settings import CommonSettings

T = TypeVar("T")
Send = Callable[[Sequence[Event]], None]
FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """What became of one item: a status for the summary, and the events it gives (none when it gives nothing)."""

    status: str
    events: tuple[Event, ...] = ()


@dataclass
class Tally:
    """A run's summary: items by status, events sent, and the first errors (what a person needs to act on)."""

    statuses: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    errors: list[str] = field(default_factory=list)


def to_broker(producer: EventProducer) -> Send:
    """Send events keyed as the gateway keys them (a completion and the votes on it share a partition), and return
    once the broker has acknowledged them all."""
    return lambda batch: producer.send_records([(event.key, encode(event)) for event in batch])


def run(items: Sequence[T], work: Callable[[T], Outcome], send: Send, concurrency: int = 8,
        advance: Callable[[], None] = lambda: None, chunk: int = 64) -> Tally:
    """``work`` on every item, ``concurrency`` at a time; their events sent in chunks of ``chunk``, in the order the
    items finish. An item whose request the engine refused counts as failed; ``EngineUnavailable`` (and anything
    else unexpected) ends the run: the items not started are dropped and the events of the finished ones sent."""
    tally = Tally()
    pending: list[Event] = []

    def flush() -> None:
        if pending:
            send(pending)
            tally.sent += len(pending)
            pending.clear()

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="machine-feedback") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except EngineError as exc:
                    outcome = Outcome(FAILED)
                    if len(tally.errors) < 5:
                        tally.errors.append(str(exc))
                tally.statuses[outcome.status] += 1
                pending.extend(outcome.events)
                if len(pending) >= chunk:
                    flush()
                advance()
        except BaseException:
            for future in futures:
                future.cancel()
            flush()
            raise
    flush()
    return tally


def run_to_broker(items: Sequence[T], work: Callable[[Engine, T], Outcome], engine: Engine, settings: CommonSettings,
                  concurrency: int = 8, advance: Callable[[], None] = lambda: None,
                  on_sent: Send = lambda batch: None) -> Tally:
    """``run`` with ``engine``, each chunk of events sent through a producer of its own (closed at the end) and then
    passed to ``on_sent``: what ``flywheel label`` and ``flywheel constitution`` do, and the demo's machine feedback.
    ``BrokerUnavailable`` when no broker can be reached."""
    producer = EventProducer(settings)
    forward = to_broker(producer)

    def send(batch: Sequence[Event]) -> None:
        forward(batch)
        on_sent(batch)

    try:
        return run(items, lambda item: work(engine, item), send, concurrency, advance)
    finally:
        producer.close()
