"""Settings shared by every part of the loop.

All configuration comes from environment variables with the ``FLYWHEEL_`` prefix (or a
``.env`` file), so the embedded stack and a production deployment run the same code with
different values. Each room extends this class with what only it needs.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"),
        description="Everything the embedded stack writes: database, model, adapters, MLflow store.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: a SQLite file in the data dir. Production: postgresql+psycopg://…",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of the Kafka-protocol broker."
    )
    kafka_topic: str = Field(
        default="flywheel.events",
        description="One topic for completions and feedback, so both share a partition per response.",
    )
    kafka_partitions: int = Field(default=4, ge=1, description="Partitions of the topic when Flywheel creates it.")
    kafka_send_timeout_s: float = Field(
        default=5.0, ge=0.1,
        description="Longest wait for the broker to acknowledge an event (or to connect); then 503, and the "
                    "producer reconnects in the background while later requests fail at once.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking/registry URI. Default: a SQLite store in the data dir."
    )
    registered_model: str = Field(default="flywheel-policy", description="MLflow registered model name.")
    base_model: Path | None = Field(
        default=None,
        description="A local HF model folder. Default: SmolLM2-135M-Instruct prepared in the data dir.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'flywheel.db'}"

    @cached_property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @cached_property
    def resolved_base_model(self) -> Path:
        return self.base_model or self.data_dir / "models" / "SmolLM2-135M-Instruct"

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]
