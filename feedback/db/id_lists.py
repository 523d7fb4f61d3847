"""Ids for ``IN (...)`` lists, in chunks: one list per query, far below every driver's parameter limit.

SQLite allows 32 766 bound parameters and PostgreSQL's protocol 65 535; a training snapshot
or a rater's history can hold more ids than that, so any query over an unbounded id set
goes through ``id_chunks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

CHUNK = 500


def id_chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    """The ids, sorted (a stable query order), in lists of at most ``CHUNK``."""
    ordered = sorted(ids)
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start : start + CHUNK]
