"""The embedded stack's vLLM engine: its OpenAI server with runtime LoRA loading, as a managed child."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from flywheel.stack.supervise import ManagedProcess
from serving.settings import ServingSettings


def vllm_process(settings: ServingSettings, model_dir: Path, log_path: Path,
                 env: Mapping[str, str] | None = None) -> ManagedProcess:
    """vLLM's OpenAI server with runtime LoRA loading on (each version is loaded under its own name).

    ``env`` adds to the engine's environment (a benchmark sets ``VLLM_PLUGINS`` to compare without
    Flywheel's CPU LoRA ops, ``flywheel.stack.vllm_cpu_lora``).
    """
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", settings.base_engine_model,
        "--host", "127.0.0.1",
        "--port", str(settings.engine_port),
        "--dtype", "bfloat16",
        "--max-model-len", str(settings.engine_max_model_len),
        "--enable-lora",
        "--max-lora-rank", str(settings.engine_max_lora_rank),
        "--max-loras", str(settings.engine_max_loras),
        "--disable-log-stats",
    ]
    engine_env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.engine_kv_cache_gb),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        **(env or {}),
    }
    url = f"http://127.0.0.1:{settings.engine_port}/health"
    return ManagedProcess(
        "engine (vllm)", argv, log_path, ready=lambda: httpx.get(url, timeout=2).status_code == 200,
        env=engine_env, startup_timeout=settings.engine_startup_timeout,
    )
