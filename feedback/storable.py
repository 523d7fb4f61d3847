"""Text the store cannot hold, found at the edge and made harmless in quarantine.

PostgreSQL refuses a NUL character in ``text`` and in ``jsonb`` (SQLite takes it), and no
database driver can encode a lone UTF-16 surrogate (``"\\ud800"`` in JSON parses to one).
One such string in an event once made the worker's insert fail for its whole batch, forever.
The gateway refuses them with a 400 (``first_unstorable``); an event that reaches the worker
anyway (another producer, an older gateway) is quarantined with its text replaced
(``replace_unstorable``), so ops can still read it.
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def first_unstorable(value: Any, path: str = "body") -> str | None:
    """Where in a parsed JSON value the first unstorable character sits, said for a person; None if nowhere."""
    if isinstance(value, str):
        match = _UNSTORABLE.search(value)
        if match is None:
            return None
        what = "a NUL character (\\u0000)" if match.group() == "\x00" else "a lone UTF-16 surrogate"
        return f"{path}: contains {what}, which cannot be stored"
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = first_unstorable(key, f"{path} (a key)") or first_unstorable(item, f"{path}.{key}")
        if found is not None:
            return found
    return None


def replace_unstorable(value: Any) -> Any:
    """A copy of a JSON value with every unstorable character replaced by U+FFFD."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {replace_unstorable(k): replace_unstorable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_unstorable(v) for v in value]
    return value
