"""The store's tables. Alembic (``migrations/``) creates them; the app never calls create_all."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from feedback.events import HUMAN, utcnow

JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JsonType, list[Any]: JsonType}


class App(Base):
    """A caller of the gateway. Only the SHA-256 of its key is stored: keys are random, 256-bit."""

    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16), doc="The first characters, to recognise a key in UIs.")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Completion(Base):
    """One answer served. Feedback is only training data if it points at a row here of the same app."""

    __tablename__ = "completions"

    response_id: Mapped[str] = mapped_column(String(48), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    pair_id: Mapped[str | None] = mapped_column(String(48), index=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    user_id: Mapped[str | None] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(32), index=True)
    messages: Mapped[list[Any]]
    prompt_hash: Mapped[str] = mapped_column(String(64), index=True, doc="Groups answers to the same prompt.")
    answer: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Feedback(Base):
    """Accepted feedback: what the trainer may learn from, with the weight the filters gave it."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("app_id", "event_id", name="uq_feedback_app_event"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), index=True, doc="The app's idempotency key: unique per app.")
    type: Mapped[str] = mapped_column(String(16))
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    response_id: Mapped[str | None] = mapped_column(ForeignKey("completions.response_id"), index=True)
    pair_id: Mapped[str | None] = mapped_column(String(48), index=True)
    rating: Mapped[str | None] = mapped_column(String(8))
    choice: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    source: Mapped[str] = mapped_column(
        String(16), default=HUMAN, server_default=HUMAN,
        doc="human, or the machine that gave it (feedback.events.FeedbackSource): counted apart in every snapshot.")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Quarantine(Base):
    """Feedback held back from training, with why. Kept whole so ops can inspect or release it."""

    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("app_id", "event_id", name="uq_quarantine_app_event"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), index=True, doc="The app's idempotency key: unique per app.")
    type: Mapped[str] = mapped_column(String(16))
    app_id: Mapped[int] = mapped_column(Integer, index=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    reasons: Mapped[list[Any]]
    evidence: Mapped[dict[str, Any]]
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasMove(Base):
    """Every move of a registry alias. MLflow keeps no alias history; rollback reads this."""

    __tablename__ = "alias_moves"
    __table_args__ = (Index("ix_alias_moves_model_alias_at", "model_name", "alias", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(256), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(
        String(32), doc="promote, rollback, challenger, bootstrap, canary, canary_stop (see registry.promotion)")
    from_version: Mapped[str | None] = mapped_column(String(32))
    to_version: Mapped[str] = mapped_column(String(32), doc="canary_stop: the version whose canary ended.")
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    percent: Mapped[float | None] = mapped_column(
        Float, default=None, doc="The canary's share of end users after this move (0 once it stopped).")
    evidence: Mapped[dict[str, Any] | None] = mapped_column(
        default=None, doc="What an automatic decision saw: its test statistics and thresholds.")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdminAction(Base):
    """Every admin action (quarantine release and purge, model promotion): who did what to what, and when."""

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(128), doc="app:<name> over HTTP, cli:<login> from the CLI.")
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256), index=True)
    app_id: Mapped[int | None] = mapped_column(
        Integer, index=True, doc="The app whose event a quarantine action touched: event ids are unique per app."
    )
    detail: Mapped[dict[str, Any]]
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BatchAlert(Base):
    """A micro-batch that failed a batch-level contract check (label flood, unknown-id spike): kept, not ignored."""

    __tablename__ = "batch_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    check: Mapped[str] = mapped_column(String(128), index=True)
    detail: Mapped[dict[str, Any]]
    batch: Mapped[dict[str, Any]] = mapped_column(doc="Size and time span of the micro-batch.")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FlaggedRater(Base):
    """A rater (app, end user) a history filter condemned: bot pattern, campaign member, unreliable.

    Flags are sticky: the rest of the filter state is rebuilt from the stored events on start,
    but a flag is a decision (it moved the rater's accepted votes to quarantine), so it is kept.
    """

    __tablename__ = "flagged_raters"
    __table_args__ = (UniqueConstraint("app_id", "user_id", "reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[int] = mapped_column(Integer, index=True)
    user_id: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any]]
    flagged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RewardScore(Base):
    """The current reward model's score of a served answer, written by the trainer after each round.

    The reliability filter counts the reward model as one more rater (``feedback/filters/reliability.py``).
    The worker imports no torch, so the trainer, which has the model, scores the answers that
    received votes and replaces this table; the worker reads it.
    """

    __tablename__ = "reward_scores"

    response_id: Mapped[str] = mapped_column(ForeignKey("completions.response_id"), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    run_id: Mapped[str] = mapped_column(String(64), doc="The MLflow run whose reward model gave the score.")
    model_accuracy: Mapped[float] = mapped_column(
        Float, doc="That model's held-out accuracy, measured by the trainer: its voice in the reliability estimate."
    )
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
