"""Gateway overhead: chat through Flywheel vs vLLM directly; feedback ingest vs a bare producer.

    python -m tests.bench.bench_gateway [--model DIR] [--requests 64] [--concurrency 8] [--rounds 3]

Both sides of each comparison run in this one process against the same broker and engine,
in alternating rounds, and the medians are compared: these machines are noisy, so only a
ratio taken in one run means anything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from kafka import KafkaProducer
from rich.console import Console
from rich.table import Table

from feedback.events import ThumbsEvent, encode, new_root
from tests.bench.stack import BenchStack, bench_stack

console = Console()
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


async def _chat_rate(url: str, headers: dict[str, str], model: str, requests: int, concurrency: int) -> float:
    """Completed chat requests per second at the given concurrency."""
    limit = asyncio.Semaphore(concurrency)
    body = {"model": model, "messages": PROMPT, "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:

        async def one() -> None:
            async with limit:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        return requests / (time.perf_counter() - started)


async def _feedback_rate(stack: BenchStack, events: int, concurrency: int, per_request: int) -> float:
    """Feedback events per second accepted (202, broker acknowledged) by the gateway.

    ``per_request`` 1 posts to ``/v1/feedback``; more posts lists of that size to ``/v1/feedback/batch``.
    """
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {stack.key}"}
    path = "/v1/feedback" if per_request == 1 else "/v1/feedback/batch"

    def vote() -> dict[str, str]:
        return {"type": "thumbs", "response_id": f"resp_{new_root()}", "rating": "up", "user_id": "bench"}

    async with httpx.AsyncClient(timeout=60, headers=headers) as client:

        async def one() -> None:
            async with limit:
                body = vote() if per_request == 1 else [vote() for _ in range(per_request)]
                response = await client.post(f"{stack.gateway}{path}", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(events // per_request)))
        return events / (time.perf_counter() - started)


def _bare_producer_rate(stack: BenchStack, events: int, concurrency: int) -> float:
    """The floor: kafka-python alone, same settings (idempotent, acks=all), ``concurrency`` sends in flight."""
    producer = KafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, acks="all",
                             enable_idempotence=True, linger_ms=5)
    try:
        started = time.perf_counter()
        pending: list[Any] = []
        for _ in range(events):
            event = ThumbsEvent(app_id=1, response_id=f"resp_{new_root()}", rating="up", user_id="bench")
            pending.append(producer.send(stack.settings.kafka_topic, key=event.key, value=encode(event)))
            if len(pending) >= concurrency:
                for future in pending:
                    future.get(timeout=30)
                pending.clear()
        for future in pending:
            future.get(timeout=30)
        return events / (time.perf_counter() - started)
    finally:
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="HF model folder (default: a tiny random Llama)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with console.status("starting broker, engine and gateway…"), bench_stack(args.model) as stack:
        pass_through = {"Authorization": f"Bearer {stack.key}"}
        direct: list[float] = []
        gateway: list[float] = []
        bare: list[float] = []
        ingest: list[float] = []
        batched: list[float] = []
        asyncio.run(_chat_rate(stack.settings.resolved_engine_url, {}, stack.settings.base_engine_model, 8, 4))
        for round_ in range(args.rounds):
            console.print(f"round {round_ + 1}/{args.rounds}")
            direct.append(asyncio.run(_chat_rate(stack.settings.resolved_engine_url, {},
                                                 stack.settings.base_engine_model, args.requests, args.concurrency)))
            gateway.append(asyncio.run(_chat_rate(stack.gateway, pass_through, stack.settings.public_model,
                                                  args.requests, args.concurrency)))
            bare.append(_bare_producer_rate(stack, args.events, args.concurrency))
            ingest.append(asyncio.run(_feedback_rate(stack, args.events, args.concurrency, 1)))
            batched.append(asyncio.run(_feedback_rate(stack, args.events, args.concurrency, 50)))

    table = Table("what", "baseline (median/s)", "flywheel (median/s)", "ratio")
    for name, base, ours in (("chat requests: vLLM direct vs gateway", direct, gateway),
                             ("feedback events: bare producer vs POST /v1/feedback", bare, ingest),
                             ("feedback events: bare producer vs /v1/feedback/batch of 50", bare, batched)):
        b, o = statistics.median(base), statistics.median(ours)
        table.add_row(name, f"{b:.1f}", f"{o:.1f}", f"{o / b:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
