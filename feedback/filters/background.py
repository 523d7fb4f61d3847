"""A history search that runs beside the stream: one call in a daemon thread, its result collected later.

The consensus search's fits take seconds to minutes on a large history (the first one after a
start reviews every rater). Run inside a micro-batch's transaction they stall ingestion that
long; run here, the batch commits and later batches collect the flags once they are ready.
A daemon thread, not an executor: a worker asked to stop must not wait for a search whose
flags it would never store (the next process searches again from the database).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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
