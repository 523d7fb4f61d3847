"""The ground truth of a simulation: one JSON line per feedback event the gateway accepted.

The simulator sets every ``event_id`` itself, so a line here names the same event the
worker stores in ``feedback`` or ``quarantine``; the report joins the two on that id. A
line is written (and flushed) only after the gateway's 202, so an interrupted run still
leaves a truth file that matches what was sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

UserType = Literal["honest", "noisy", "fast_bot", "campaign", "slow_attacker", "phrase_pusher"]
USER_TYPES: tuple[str, ...] = get_args(UserType)


class TruthRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    user_id: str
    user_type: UserType
    adversarial: bool = Field(description="Sent by an attacking account (every vote of it, honest-looking or not).")
    poisoned: bool = Field(description="A vote cast against the hidden preference on purpose (a slow attacker's "
                           "inverted vote, a phrase pusher's pushed vote where the preference would differ).")
    preferred: str | None = Field(default=None, description="What the hidden preference says of what was served "
                                  "(up/down, a/b/tie): the vote of an honest user who never slips. None in truth "
                                  "files written before it was recorded.")
    type: Literal["thumbs", "pairwise"]
    vote: str = Field(description="The rating (up/down) or the choice (a/b/tie).")
    target_id: str = Field(description="The response id (thumbs) or pair id (pairwise) voted on.")
    prompt_id: str
    reading_seconds: float = Field(description="Wall-clock seconds waited between the answer and the vote.")
    sent_at: datetime
    scenario: str


class TruthWriter:
    """Appends truth records to a JSONL file, one flushed line each."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8")

    def write(self, record: TruthRecord) -> None:
        self._file.write(record.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TruthWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_truth(path: Path) -> Iterator[TruthRecord]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield TruthRecord.model_validate_json(line)
