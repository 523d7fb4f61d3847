"""Adapter serving against base-model serving on the embedded CPU engine, with and without Flywheel's LoRA ops.

    python -m tests.bench.bench_engine_lora [--model DIR] [--requests 32] [--concurrency 8] [--rounds 2]
    python -m tests.bench.bench_engine_lora --compare dtype

Two engines in turn (never at once: each binds a core): one with vLLM's own CPU LoRA ops
(``VLLM_PLUGINS`` names none of ours), one with ``flywheel.stack.vllm_cpu_lora``; with
``--compare dtype``, both with Flywheel's ops, one in bfloat16 and one in float32 (what
``engine_dtype=auto`` chooses between by the CPU's flags). On each,
a LoRA adapter shaped as the trainer makes them (``TrainConfig``'s rank and target modules,
random non-zero weights) is loaded, and rounds alternate the base model and the adapter.
The figure is each engine's adapter/base ratio of generated tokens per second, measured
in the same run, and the gain between the two ratios. Without ``--model`` it uses
SmolLM2-135M-Instruct (prepared once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from feedback.settings import CommonSettings
from flywheel.stack.engine import vllm_process
from flywheel.stack.supervise import free_port
from serving.settings import EngineDtype, ServingSettings
from trainer.base_model import ensure_base_model
from trainer.config import TrainConfig
from trainer.policy import lora_config

console = Console()
ADAPTER = "bench-adapter"
SIDES: dict[str, dict[str, tuple[dict[str, str], EngineDtype]]] = {  # --compare: side -> (engine env, dtype)
    "lora-ops": {"vLLM's CPU LoRA ops": ({"VLLM_PLUGINS": "none"}, "auto"),
                 "Flywheel's (vllm_cpu_lora)": ({}, "auto")},
    "dtype": {"bfloat16": ({}, "bfloat16"), "float32": ({}, "float32")},
}


def make_adapter(model: Path, out: Path) -> Path:
    """A LoRA adapter of the trainer's default shape with random non-zero weights (so every op does work)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model), lora_config(TrainConfig()))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1e-3)
    peft_model.save_pretrained(out)
    return out


async def token_rate(url: str, model: str, requests: int, concurrency: int) -> float:
    """Generated tokens per second: ``requests`` chats of 2 samples x 48 tokens, ``concurrency`` in flight."""
    limit = asyncio.Semaphore(concurrency)
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(i: int) -> None:
            nonlocal tokens
            body = {"model": model, "messages": [{"role": "user", "content": f"Tell me about topic number {i}."}],
                    "max_tokens": 48, "n": 2, "temperature": 1.0, "ignore_eos": True}
            async with limit:
                response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return tokens / (time.perf_counter() - started)


def measure(model: Path, adapter: Path, workdir: Path, env: dict[str, str], dtype: EngineDtype, args: argparse.Namespace
            ) -> tuple[float, float]:
    """Median base and adapter tok/s on one engine, alternating rounds after a warm-up of each."""
    settings = ServingSettings(data_dir=workdir, base_model=model, engine_port=free_port(), engine_kv_cache_gb=1,
                               engine_max_model_len=1024, engine_dtype=dtype)
    url = settings.resolved_engine_url
    base, adapted = [], []
    with vllm_process(settings, model, workdir / "engine.log", env=env):
        httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": ADAPTER, "lora_path": str(adapter)},
                   timeout=120).raise_for_status()
        for name in (settings.base_engine_model, ADAPTER):
            asyncio.run(token_rate(url, name, args.concurrency, args.concurrency))
        for _ in range(args.rounds):
            base.append(asyncio.run(token_rate(url, settings.base_engine_model, args.requests, args.concurrency)))
            adapted.append(asyncio.run(token_rate(url, ADAPTER, args.requests, args.concurrency)))
    return statistics.median(base), statistics.median(adapted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare", choices=sorted(SIDES), default="lora-ops",
                        help="lora-ops: vLLM's CPU LoRA ops against Flywheel's; dtype: bfloat16 against float32")
    args = parser.parse_args()
    model = args.model or ensure_base_model(CommonSettings())
    table = Table("engine", "base tok/s", "adapter tok/s", "adapter / base")
    ratios: list[float] = []
    rates: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-lora-") as tmp:
        adapter = make_adapter(model, Path(tmp) / "adapter")
        for side, (env, dtype) in SIDES[args.compare].items():
            with console.status(f"{side}: starting an engine and measuring…"):
                base, adapted = measure(model, adapter, Path(tmp) / f"engine-{len(ratios)}", env, dtype, args)
            ratios.append(adapted / base)
            rates.append((base, adapted))
            table.add_row(side, f"{base:.1f}", f"{adapted:.1f}", f"{ratios[-1]:.2f}")
    console.print(table)
    shape = f"(r={TrainConfig().lora_r}, {args.concurrency} requests x 2 samples in flight, 48 tokens)"
    if args.compare == "dtype":
        (bf16_base, bf16_adapter), (fp32_base, fp32_adapter) = rates
        console.print(f"float32 against bfloat16: base x{fp32_base / bf16_base:.2f}, adapter "
                      f"x{fp32_adapter / bf16_adapter:.2f} {shape}")
    else:
        console.print(f"adapter serving, Flywheel's ops against vLLM's: x{ratios[1] / ratios[0]:.2f} {shape}")


if __name__ == "__main__":
    main()
