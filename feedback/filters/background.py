"""History searches that run beside the stream: one call in a daemon thread, its result collected later.

The history-wide searches (the consensus's fits, the campaign search's first indexing of every
answer) take seconds to minutes on a large history, the first one after a start above all (it
reviews every rater). Run inside a micro-batch's transaction they stall ingestion that long;
run here, the batch commits and later batches collect the flags once they are ready. A daemon
thread, not an executor: a worker asked to stop must not wait for a search whose flags it
would never store (the next process searches again from the database).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from feedback.filters.base import Flag, Rater

T = TypeVar("T")
S = TypeVar("S")


class Background(Generic[T]):
    """``work()`` running in its own thread; ``result`` waits for it up to a timeout and re-raises its error."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._work = work
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def result(self, timeout: float | None) -> tuple[bool, T | None]:
        """(True, the value) once the work finished within ``timeout`` seconds (None: however long), else
        (False, None). The work's exception is raised here."""
        if not self._done.wait(timeout):
            return False, None
        if self._error is not None:
            raise self._error
        return True, self._value


def _unchanged(snapshot: Any, raters: set[Rater]) -> Any:
    return snapshot


@dataclass(frozen=True)
class Search(Generic[S]):
    """One history filter's search, split the way the filter splits it so that the costly part can leave the batch.

    ``prepare(raters)`` reads the filter state into a snapshot (cheap; in the batch, on the batch's
    thread, the only one that touches the state and the session), None when nobody is to be
    searched; ``decide(snapshot)`` is the costly part, run in the thread on the snapshot alone.
    ``without(snapshot, raters)`` is the snapshot ``prepare`` would have taken had ``raters`` been
    flagged first (None: nobody left to search), for a search that must not learn from raters an
    earlier search of the same round condemns. ``still_new(flag)``: whether a search inside the
    batch would still raise ``flag`` now (the state may have flagged its rater since the snapshot).
    """

    prepare: Callable[[set[Rater]], S | None]
    decide: Callable[[S], list[Flag]]
    still_new: Callable[[Flag], bool]
    without: Callable[[S, set[Rater]], S | None] = _unchanged


class Searches:
    """Rounds of history searches beside the stream: the raters due, and the one round running.

    A round is what a search inside the batch would do: every search's snapshot taken in one batch,
    then in one thread each search decides in turn, a later one on its snapshot without the raters
    the earlier ones condemned (``Search.without``). One round runs at a time (a filter may keep
    state from one search to the next: warm starts, campaign memberships); raters who come due
    meanwhile wait for the next round.
    """

    def __init__(self, searches: Sequence[Search[Any]], name: str) -> None:
        self.due: set[Rater] = set()
        self._searches = tuple(searches)
        self._name = name
        self._job: Background[list[list[Flag]]] | None = None

    @property
    def idle(self) -> bool:
        """Nothing running and nobody due."""
        return self._job is None and not self.due

    def wait(self, timeout: float | None) -> bool:
        """Whether the running round has ended (or none runs) within ``timeout`` seconds; its flags stay to collect."""
        return self._job is None or self._job.result(timeout)[0]

    def start(self) -> None:
        """Start a round over the raters due, unless one is running (they wait for the next)."""
        if self._job is not None or not self.due:
            return
        snapshots = [search.prepare(self.due) for search in self._searches]
        self.due = set()
        if any(snapshot is not None for snapshot in snapshots):
            self._job = Background(lambda: self._round(snapshots), self._name)

    def _round(self, snapshots: list[Any]) -> list[list[Flag]]:
        """Each search's flags, in turn (runs in the thread)."""
        found: list[list[Flag]] = []
        condemned: set[Rater] = set()
        for search, snapshot in zip(self._searches, snapshots, strict=True):
            if snapshot is not None and condemned:
                snapshot = search.without(snapshot, condemned)
            flags = [] if snapshot is None else search.decide(snapshot)
            condemned |= {flag.rater for flag in flags}
            found.append(flags)
        return found

    def collect(self, wait: float | None) -> list[Flag] | None:
        """The flags still new of the running round if it ends within ``wait`` seconds (None: however long), in
        the order the searches raised them; None if it has not ended (or none runs). Its error is raised here."""
        if self._job is None:
            return None
        done, found = self._job.result(wait)
        if not done:
            return None
        self._job = None
        return [flag for search, flags in zip(self._searches, found or [], strict=True) for flag in flags
                if search.still_new(flag)]
