"""Gateway and engine settings (``FLYWHEEL_`` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from feedback.settings import CommonSettings
from registry.canary_rule import CanaryRule
from serving.feedback_tokens import load_or_create_secret

EngineDtype = Literal["auto", "bfloat16", "float32"]
EngineLauncherKind = Literal["vllm", "none"]


class ServingSettings(CommonSettings):
    host: str = Field(default="127.0.0.1", description="Gateway bind address.")
    port: int = Field(default=8000, description="Gateway port.")
    public_model: str = Field(default="flywheel", description="The model id apps send and see.")
    engine_url: str | None = Field(
        default=None,
        description="An external vLLM OpenAI server (runtime LoRA enabled). Unset: `flywheel up` starts one.",
    )
    engine_port: int = Field(default=8001, description="Port of the embedded vLLM engine.")
    engine_max_lora_rank: int = Field(
        default=16, description="Largest LoRA rank the engine accepts (vLLM --max-lora-rank)."
    )
    engine_max_loras: int = Field(default=2, description="Adapters resident at once in the engine.")
    engine_max_model_len: int = Field(
        default=2048, description="Longest prompt plus answer, in tokens (vLLM --max-model-len)."
    )
    engine_kv_cache_gb: int = Field(default=2, description="vLLM CPU KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    engine_dtype: EngineDtype = Field(
        default="auto",
        description=(
            "Weights and activations of the embedded engine (vLLM --dtype). auto: bfloat16 where the CPU computes it "
            "natively (AVX512-BF16 or AMX), else float32: on an AVX2-only CPU vLLM's bfloat16 is emulated and "
            "served SmolLM2 at 0.27 of float32's rate (docs/benchmarks.md)."
        ),
    )
    engine_startup_timeout: float = Field(
        default=600.0, gt=0, description="Seconds the engine may take to start; also how long the gateway waits for "
                                         "the health check of an engine it launched for a full-model version.")
    engine_launcher: EngineLauncherKind = Field(
        default="vllm", description="How the gateway gets an engine for a version that is a full model (swapped "
                                    "blue/green): vllm starts a vLLM process on the gateway's machine, on a free "
                                    "port, as the embedded stack starts its engine; none launches nothing (such a "
                                    "version fails to load, counted and shown, and the live version keeps serving).")
    engine_launch_cpus: str = Field(
        default="", description="CPU engines only: the cores engines the gateway launches bind their threads to "
                                "(vLLM's VLLM_CPU_OMP_THREADS_BIND), as core sets separated by '|' that successive "
                                "launches take in turn, e.g. '1|0' on 2 cores. A blue/green swap runs two engines at "
                                "once; with vLLM's own choice (empty) both bind the same cores, and on 2 cores the new "
                                "one starts at a crawl beside the serving one. Give the sets cores the deployment's "
                                "engine does not need while it is idle.")
    engine_launch_retry_seconds: float = Field(
        default=300.0, ge=0, description="After an engine for a full-model version failed to start or to pass its "
                                         "health check, how long the gateway waits before launching it again (a "
                                         "start takes about a minute of both cores on the embedded stack).")
    engine_timeout: float = Field(default=300.0, description="Seconds a chat may take in the engine.")
    swap_poll_seconds: float = Field(default=2.0, gt=0, description="How often the registry is read.")
    swap_preload_challenger: bool = Field(
        default=True, description="Load the challenger's adapter (a candidate that passed every gate: the likely next "
                                  "promotion or canary) into the engine before any alias routes to it, so that move "
                                  "is not held up by vLLM's load. The embedded engine keeps one more adapter in "
                                  "memory for it (vLLM --max-cpu-loras).")
    swap_unload_grace_seconds: float = Field(
        default=5.0, ge=0, description="How long an adapter that is neither champion nor canary any more stays "
                                       "loaded in the engine, counted from then and from the end of the last request "
                                       "it answered; then the gateway unloads it. Gateways sharing one engine: keep "
                                       "it above swap_poll_seconds, within which every gateway stops sending new "
                                       "requests to it.")
    live_numbers_seconds: float = Field(
        default=30.0, gt=0, description="How often the gateway reads each version's live numbers (thumbs-up rate, "
                                        "the canary's picks, answer length) from the store into Prometheus.")
    canary_check_seconds: float = Field(
        default=30.0, ge=0, description="How often the gateway applies the canary rule to the running canary: roll "
                                        "it back, promote it or stop it, audited with the evidence. 0: never "
                                        "(ops decide by hand).")
    canary_rule: CanaryRule = Field(
        default_factory=CanaryRule,
        description='The canary rule\'s thresholds as JSON, e.g. {"alpha": 0.05, "min_votes_promote": 200, '
                    '"max_duration": "PT24H", "promote": true}; every field in docs/canary.md.')
    feedback_token_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of browser feedback tokens. Unset: generated once into "
                                  "feedback_token.secret in the data dir. Set it alike on every gateway of a "
                                  "deployment that does not share a data dir.")
    feedback_token_ttl_s: float = Field(
        default=1800.0, gt=0, description="How long the feedback token returned with an answer stays valid.")
    rate_limit_per_s: float = Field(
        default=500.0, ge=0, description="Requests a second each app may send to /v1 routes on average (a token "
                                         "bucket per app and gateway); beyond, 429 with Retry-After. 0: no limit.")
    rate_limit_burst: int = Field(
        default=5000, ge=1, description="Requests an app may send at once above its rate (the bucket's size).")
    key_cache_seconds: float = Field(default=30.0, ge=0, description="How long a verified API key is trusted.")
    outbox_path: Path | None = Field(
        default=None, description="The gateway's durable outbox (SQLite). Default: outbox.db in the data dir; "
                                  "one gateway process per file.")
    outbox_max_events: int = Field(default=100_000, ge=1,
                                   description="Undelivered events the outbox holds; beyond, 503 with Retry-After.")
    outbox_retain_s: float = Field(
        default=600.0, ge=0, description="How long events the broker acknowledged stay in the outbox, to be sent "
                                         "again if the broker fails (a memory broker forgets). Keep it above the "
                                         "worker's lag.")

    @property
    def resolved_outbox_path(self) -> Path:
        return self.outbox_path or self.data_dir / "outbox.db"

    def feedback_token_key(self) -> bytes:
        """The feedback tokens' HMAC secret: the setting, or the data dir's file (created on first use)."""
        if self.feedback_token_secret is not None:
            return self.feedback_token_secret.get_secret_value().encode()
        return load_or_create_secret(self.data_dir / "feedback_token.secret")

    @property
    def resolved_engine_url(self) -> str:
        return (self.engine_url or f"http://127.0.0.1:{self.engine_port}").rstrip("/")

    @property
    def base_engine_model(self) -> str:
        """The name vLLM serves the base model under; adapters are ``<registered_model>-v<N>``."""
        return f"{self.registered_model}-base"

    def version_engine_model(self, version: str) -> str:
        """The name a version's adapter is loaded under: one per version, as vLLM's docs advise."""
        return f"{self.registered_model}-v{version}"
