"""The embedded stack's vLLM engine: its OpenAI server with runtime LoRA loading, as a managed child.

The same start serves ``VllmLauncher``, the gateway's way to get a second engine on this machine for a
version that is a full model (swapped blue/green, ``serving.champion``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from flywheel.stack.supervise import ManagedProcess, free_port
from serving.engines import EngineSpec, LaunchedEngine
from serving.settings import ServingSettings

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""CPU flags (``/proc/cpuinfo``) under which vLLM's CPU kernels compute bfloat16 natively."""


def engine_dtype(settings: ServingSettings, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The ``--dtype`` the engine runs: the setting, or for ``auto`` what this CPU computes natively.

    Without AVX512-BF16 or AMX, vLLM's CPU build converts bfloat16 in software at every
    operation: on an AVX2-only 2-core machine it generated 10.7 tokens/s against float32's 39.2
    (``bench_engine_lora --compare dtype``). A CPU whose flags cannot be read gets float32, which
    is never emulated.
    """
    if settings.engine_dtype != "auto":
        return settings.engine_dtype
    try:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
    except OSError:
        return "float32"
    return "bfloat16" if flags & NATIVE_BF16_FLAGS else "float32"


def vllm_process(settings: ServingSettings, model_dir: Path, log_path: Path,
                 env: Mapping[str, str] | None = None, port: int | None = None,
                 served_name: str | None = None) -> ManagedProcess:
    """vLLM's OpenAI server with runtime LoRA loading on (each version is loaded under its own name).

    ``env`` adds to the engine's environment (a benchmark sets ``VLLM_PLUGINS`` to compare without
    Flywheel's CPU LoRA ops, ``flywheel.stack.vllm_cpu_lora``). ``port`` and ``served_name`` default to
    the deployment's engine (``engine_port``, the base model's name); a launched engine has its own.
    """
    port = port or settings.engine_port
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", served_name or settings.base_engine_model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", engine_dtype(settings),
        "--max-model-len", str(settings.engine_max_model_len),
        # Whole prefills only: vLLM 0.32's CPU build fails the whole engine when a request carrying a
        # `seed` (which the gateway passes on) has its prefill split into chunks, as happens whenever
        # the prompts in flight exceed one step's budget (tests/e2e/test_engine_seeds.py). A step then
        # holds at least one whole prompt of the longest kind.
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens", str(max(2048, settings.engine_max_model_len)),
        "--enable-lora",
        "--max-lora-rank", str(settings.engine_max_lora_rank),
        "--max-loras", str(settings.engine_max_loras),
        # Resident adapters: champion and canary, and the challenger loaded ahead of its move. Loading one more
        # than this evicts the least recently used, which the next request on it would load again.
        "--max-cpu-loras", str(settings.engine_max_loras + settings.swap_preload_challenger),
        "--disable-log-stats",
    ]
    engine_env = {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(settings.engine_kv_cache_gb),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        **(env or {}),
    }
    url = f"http://127.0.0.1:{port}/health"
    return ManagedProcess(
        "engine (vllm)", argv, log_path, ready=lambda: httpx.get(url, timeout=2).status_code == 200,
        env=engine_env, startup_timeout=settings.engine_startup_timeout,
    )


class LaunchedVllm:
    """A vLLM process the gateway started for a full-model version (``serving.engines.LaunchedEngine``)."""

    def __init__(self, process: ManagedProcess, url: str) -> None:
        self.process = process
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def exited(self) -> str | None:
        if self.process.alive:
            return None
        return f"{self.process.name} exited; its log ends:\n{self.process.log_tail(10)}"

    async def stop(self) -> None:
        await asyncio.to_thread(self.process.stop)


class VllmLauncher:
    """Starts a vLLM engine on this machine, as ``flywheel up`` starts its own, for each full-model version.

    The engine gets a free port, the version's name and the same flags and environment as the
    deployment's (runtime LoRA, so adapters trained on that version load into it); its log is
    ``logs/engine-v<N>.log`` in the data dir. The gateway health-checks it, so ``launch`` returns once
    the process is started. Each engine reserves its own KV cache (``FLYWHEEL_ENGINE_KV_CACHE_GB``):
    during a swap two engines hold one each, and on 2 cores they share one (slower until the old stops).
    """

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self._core_sets = [cores.strip() for cores in settings.engine_launch_cpus.split("|") if cores.strip()]
        self._launches = 0

    async def launch(self, spec: EngineSpec) -> LaunchedEngine:
        port = free_port()
        env = {}
        if self._core_sets:  # in turn: the engine being replaced holds the previous launch's cores
            env["VLLM_CPU_OMP_THREADS_BIND"] = self._core_sets[self._launches % len(self._core_sets)]
        self._launches += 1
        process = vllm_process(self.settings, spec.model_dir,
                               self.settings.data_dir / "logs" / f"engine-v{spec.version}.log",
                               env=env, port=port, served_name=spec.served_name)
        # Started on the event loop's thread, not a worker thread: the child is killed when the thread that
        # started it ends (PR_SET_PDEATHSIG, flywheel.stack.supervise), and this one lives as long as the gateway.
        process.start()
        return LaunchedVllm(process, f"http://127.0.0.1:{port}")
