"""Request and response models of the gateway: OpenAI's chat schema plus the ``flywheel`` object.

Only the fields the gateway acts on are declared; everything else OpenAI allows is passed
to vLLM untouched (``extra="allow"``), so new OpenAI parameters work without a release.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from feedback.events import ChatMessage, PairId, ResponseId
from feedback.store import as_utc

UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
"""A stored timestamp, always with its time zone (SQLite hands back naive UTC)."""


class FlywheelRequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairwise: bool = Field(default=False, description="Answer with two choices, A and B, to compare.")


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: declared so that a wrong type is a 400, not a crash mid-request."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="One answer per request (pairwise gives two).")
    user: str | None = Field(default=None, max_length=256, description="The end user; feedback names them too.")
    flywheel: FlywheelRequestOptions = Field(default_factory=FlywheelRequestOptions)

    def engine_payload(self, engine_model: str, n: int | None = None) -> dict[str, Any]:
        """The body for vLLM: our extension removed, the model resolved, two samples for a pair.

        ``n`` overrides the number of samples: a pair from two versions asks each for one.
        """
        body = self.model_dump(exclude={"flywheel", "n", "user"}, exclude_none=True)
        body["model"] = engine_model
        body["n"] = n if n is not None else 2 if self.flywheel.pairwise else 1
        if self.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body


class FlywheelAnswer(BaseModel):
    """What every answer carries beside OpenAI's fields."""

    model_version: str = Field(description="The version that answered. A pair from two versions (during a canary): "
                                           "the champion's; model_versions names each side's.")
    model_versions: list[str] | None = Field(default=None, description="Pairwise: the version of A, then of B.")
    response_id: ResponseId | None = None
    pair_id: PairId | None = None
    response_ids: list[ResponseId] | None = Field(default=None, description="Pairwise: A then B.")
    feedback_token: str | None = Field(
        default=None, description="For the browser: accepted instead of the app key by POST /v1/feedback for one "
                                  "vote on this answer (thumbs) or pair (pairwise), until it expires.")


class ChatCompletion(BaseModel):
    """OpenAI's ``chat.completion`` (its fields as vLLM answers them) plus the ``flywheel`` object. With
    ``stream: true`` the answer is ``text/event-stream`` of ``chat.completion.chunk`` objects, each with it."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    flywheel: FlywheelAnswer


class FeedbackAccepted(BaseModel):
    """The 202: the broker has these events. Accepted for now: the worker's filters still judge each one."""

    event_ids: list[str] = Field(description="One per event, in order; GET /v1/feedback/{event_id}: its verdict.")
    status: Literal["pending"] = Field(default="pending", description="Each is pending until the worker judges it.")


class FeedbackVerdict(BaseModel):
    """What became of one of the app's feedback events."""

    event_id: str
    status: Literal["pending", "accepted", "quarantined"]
    weight: float | None = Field(default=None, description="accepted: its training weight (the rater's reliability).")
    reasons: list[str] | None = Field(default=None, description="quarantined: every reason code that applied.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flywheel"
    flywheel: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error, authentication_error.")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    """OpenAI's error envelope: every error the gateway answers has this shape."""

    error: ErrorBody


class AliasMoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000, description="Why, for the audit trail.")


class AliasMoveOut(BaseModel):
    alias: str
    action: str
    from_version: str | None
    to_version: str
    actor: str
    reason: str | None
    percent: float | None = Field(default=None, description="Canary moves: its share of end users after the move.")
    evidence: dict[str, Any] | None = Field(
        default=None, description="Automatic decisions (actor system:canary): the test statistics they saw.")
    at: UtcDatetime


class ChampionMoved(BaseModel):
    champion: str = Field(description="The version the champion alias names now.")
    serving: str = Field(description="The version this gateway serves now ('' if none is loaded).")


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    percent: float = Field(gt=0, le=100, description="The percent of end users (sticky per `user`) sent to it.")
    reason: str | None = Field(default=None, max_length=2000, description="Why, for the audit trail.")


class CanaryOut(BaseModel):
    """The running canary as the registry holds it, and what this gateway does with it."""

    version: str = Field(description="The version the canary alias names.")
    percent: float = Field(description="The percent of end users sent to it.")
    since: UtcDatetime = Field(description="When this version became the canary (a percent change keeps it).")
    champion: str = Field(description="The champion it is compared with.")
    serving: bool = Field(description="Whether this gateway has it loaded and sends its share to it.")


class CanaryStopped(BaseModel):
    stopped: str = Field(description="The version whose canary ended; every user is back on the champion.")


class ServedAnswerOut(BaseModel):
    response_id: str
    app_id: int
    model_version: str
    created_at: UtcDatetime


class ServingAtOut(BaseModel):
    """Which versions answered at a moment, from the audit trail of alias moves."""

    at: UtcDatetime
    champion: str | None = Field(description="The champion then (None: before the first move).")
    champion_since: UtcDatetime | None
    canary: str | None = Field(description="The canary then, if one ran.")
    canary_percent: float | None
    canary_since: UtcDatetime | None
    user: str | None = Field(default=None, description="The end user asked about, if any.")
    user_version: str | None = Field(
        default=None, description="The version that answered that user's single answers then (their pairs: "
                                   "champion against canary if they were in its share).")
    last_answer: ServedAnswerOut | None = Field(
        default=None, description="The user's last recorded answer at or before that time, with the version that "
                                  "really gave it (a gateway follows a move within its poll interval).")


class CanaryStatus(BaseModel):
    """The running canary, if any, and what the canary rule says about it now."""

    version: str | None = Field(description="The canary's version (None: no canary with users runs).")
    percent: float | None
    since: UtcDatetime | None
    serving: bool = Field(description="Whether this gateway has it loaded and sends its share to it.")
    automatic: bool = Field(description="Whether the gateways apply the rule (FLYWHEEL_CANARY_CHECK_SECONDS > 0).")
    decision: Literal["continue", "rollback", "promote", "stop"] | None = Field(
        default=None, description="What the rule decides on the evidence so far.")
    reason: str | None = None
    evidence: dict[str, Any] | None = Field(
        default=None, description="Picks and thumbs since the canary began, both tests' statistics, the rule.")
