"""Request and response models of the gateway: OpenAI's chat schema plus the ``flywheel`` object.

Only the fields the gateway acts on are declared; everything else OpenAI allows is passed
to vLLM untouched (``extra="allow"``), so new OpenAI parameters work without a release.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from feedback.events import ChatMessage, PairId, ResponseId


class FlywheelRequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairwise: bool = Field(default=False, description="Answer with two choices, A and B, to compare.")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    n: int | None = Field(default=None, ge=1, le=1, description="One answer per request (pairwise gives two).")
    user: str | None = Field(default=None, max_length=256, description="The end user; feedback names them too.")
    flywheel: FlywheelRequestOptions = Field(default_factory=FlywheelRequestOptions)

    def engine_payload(self, engine_model: str) -> dict[str, Any]:
        """The body for vLLM: our extension removed, the model resolved, two samples for a pair."""
        body = self.model_dump(exclude={"flywheel", "n", "user"}, exclude_none=True)
        body["model"] = engine_model
        body["n"] = 2 if self.flywheel.pairwise else 1
        if self.stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body


class FlywheelAnswer(BaseModel):
    """What every answer carries beside OpenAI's fields."""

    model_version: str
    response_id: ResponseId | None = None
    pair_id: PairId | None = None
    response_ids: list[ResponseId] | None = Field(default=None, description="Pairwise: A then B.")


class FeedbackAccepted(BaseModel):
    event_ids: list[str]


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
    message: str
    type: str
    code: int


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
    at: datetime
