"""Settings only the feedback worker needs (``FLYWHEEL_WORKER_*``)."""

from __future__ import annotations

from pydantic import Field

from feedback.settings import CommonSettings


class WorkerSettings(CommonSettings):
    worker_group_id: str = Field(
        default="flywheel-worker",
        description="Kafka consumer group: workers sharing it split the partitions between them.",
    )
    worker_max_batch: int = Field(
        default=500, ge=1, description="Most records stored in one database transaction."
    )
    worker_poll_timeout_ms: int = Field(
        default=1000, ge=1, description="How long one poll waits for records; bounds how fast a stop is seen."
    )
    worker_session_timeout_ms: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Consumer group session timeout. Tansu holds a join for about half of it, so a low value "
            "makes the embedded worker start fast; real Kafka requires at least 6000 by default."
        ),
    )
    worker_heartbeat_interval_ms: int = Field(
        default=3000, ge=1, description="Consumer-group heartbeat: how soon the broker notices a worker is gone."
    )
    worker_retry_backoff_s: float = Field(
        default=2.0, gt=0, description="Pause before re-reading a batch whose database write failed."
    )
