"""The data contract: every record that travels through Kafka.

The gateway produces these, the worker consumes them, the trainer reads what the worker
stored. Identifiers are built so that a completion and any feedback on it share one
partition key without a lookup: a single answer has ``response_id = "resp_<root>"``; the two
answers of a pair have ``resp_<root>_a`` / ``resp_<root>_b`` and ``pair_id = "pair_<root>"``.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

_ID_RE = re.compile(r"^(resp|pair)_([0-9a-f]{32})(?:_([ab]))?$")
ResponseId = Annotated[str, Field(pattern=r"^resp_[0-9a-f]{32}(_[ab])?$", examples=["resp_" + "0" * 32])]
PairId = Annotated[str, Field(pattern=r"^pair_[0-9a-f]{32}$", examples=["pair_" + "0" * 32])]
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
UserId = Annotated[str, Field(min_length=1, max_length=256)]


def new_root() -> str:
    return uuid.uuid4().hex


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def answer_ids(pairwise: bool) -> tuple[str | None, list[str]]:
    """Fresh ids for one answer, or for the two answers (A, B) of a pair: ``(pair_id, response_ids)``."""
    root = new_root()
    if pairwise:
        return f"pair_{root}", [f"resp_{root}_a", f"resp_{root}_b"]
    return None, [f"resp_{root}"]


def partition_key(identifier: str) -> bytes:
    """The shared root of a response or pair id: the Kafka key of everything about it."""
    match = _ID_RE.match(identifier)
    if match is None:
        raise ValueError(f"not a Flywheel response or pair id: {identifier!r}")
    return match.group(2).encode()


def utcnow() -> datetime:
    return datetime.now(UTC)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Any] | None = None

    @property
    def text(self) -> str:
        """What a reader of the conversation sees: the content, or the text parts of a multi-part content."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict) and p.get("type") == "text")
        return self.content or ""


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event_id: EventId = Field(default_factory=new_event_id, description="The client's idempotency key.")


class _Recorded(BaseModel):
    """What the gateway adds: who sent or was served the event, and when."""

    app_id: int = Field(description="The app (API key) that sent or was served this event.")
    created_at: datetime = Field(default_factory=utcnow)


class CompletionEvent(_Event, _Recorded):
    """One answer served to an end user: what the trainer learns from, and the proof of service."""

    type: Literal["completion"] = "completion"
    response_id: ResponseId
    pair_id: PairId | None = None
    user_id: str | None = None
    model_version: str
    messages: list[ChatMessage]
    answer: str
    finish_reason: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Sampling parameters as sent.")
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def key(self) -> bytes:
        return partition_key(self.response_id)


class ThumbsFeedback(_Event):
    """Thumbs on one answer, as an app sends it."""

    type: Literal["thumbs"] = "thumbs"
    response_id: ResponseId
    rating: Literal["up", "down"]
    user_id: UserId
    comment: str | None = Field(default=None, max_length=4000)
    correction: str | None = Field(default=None, max_length=16000, description="A better answer, if given.")

    @property
    def key(self) -> bytes:
        return partition_key(self.response_id)


class PairwiseFeedback(_Event):
    """A pick between the two answers of a pair, as an app sends it."""

    type: Literal["pairwise"] = "pairwise"
    pair_id: PairId
    choice: Literal["a", "b", "tie", "both_bad"]
    user_id: UserId
    comment: str | None = Field(default=None, max_length=4000)

    @property
    def key(self) -> bytes:
        return partition_key(self.pair_id)


FeedbackSource = Literal["human", "ai", "constitution"]
HUMAN: FeedbackSource = "human"
CONSTITUTION_VERSION = "constitution"
"""The ``model_version`` of the answers a constitutional revision stores: written, never served by any version."""


class _Sourced(BaseModel):
    """Who gave the feedback. Only the gateway's own apps' users are ``human``; the machine sources are produced
    inside the deployment and put on Kafka directly (``feedback.ai``), never through the gateway, whose request
    models (``ThumbsFeedback``, ``PairwiseFeedback``) forbid the field: no app can pass its votes off as a judge's.
    """

    source: FeedbackSource = Field(
        default=HUMAN, description="human: an end user through an app; ai: an AI judge (flywheel label); "
                                   "constitution: a model's revision of its own answer (flywheel constitution).")


class ThumbsEvent(ThumbsFeedback, _Recorded, _Sourced):
    pass


class PairwiseEvent(PairwiseFeedback, _Recorded, _Sourced):
    pass


FeedbackIn = Annotated[ThumbsFeedback | PairwiseFeedback, Field(discriminator="type")]
FeedbackEvent = ThumbsEvent | PairwiseEvent
Event = Annotated[CompletionEvent | ThumbsEvent | PairwiseEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[CompletionEvent | ThumbsEvent | PairwiseEvent] = TypeAdapter(Event)


def encode(event: CompletionEvent | ThumbsEvent | PairwiseEvent) -> bytes:
    """The record's value. A human vote leaves out its ``source`` (the default), so that during a rolling upgrade a
    worker of the release before machine feedback, whose events forbid unknown fields, still reads every vote a new
    gateway sends instead of skipping it as undecodable."""
    human = not isinstance(event, CompletionEvent) and event.source == HUMAN
    return event.model_dump_json(exclude={"source"} if human else None).encode()


def decode(raw: bytes) -> CompletionEvent | ThumbsEvent | PairwiseEvent:
    return EVENT_ADAPTER.validate_json(raw)
