"""A request with a ``seed`` must not be able to take the engine down for everyone.

The gateway passes OpenAI's ``seed`` to vLLM untouched. vLLM 0.32's CPU build fails its whole
engine ("CPU Generator does not use offset") when a seeded request's prefill is split into chunks,
which happens as soon as prompts in flight exceed one step's token budget (2048 on CPU). The
embedded engine therefore runs without chunked prefill (``flywheel.stack.engine``).
"""

from __future__ import annotations

import asyncio

import httpx


async def _ask(client: httpx.AsyncClient, engine: str, model: str, index: int) -> httpx.Response:
    prompt = f"Request {index}: " + " ".join(f"word{index}x{i}" for i in range(300))
    return await client.post(f"{engine}/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4, "seed": 1000 + index, "n": 2})


async def _ask_all(engine: str, model: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return list(await asyncio.gather(*(_ask(client, engine, model, i) for i in range(count))))


def test_seeded_long_prompts_in_flight_together_all_get_answers(engine: str) -> None:
    (model, *_) = [m["id"] for m in httpx.get(f"{engine}/v1/models", timeout=10).json()["data"]]
    answers = asyncio.run(_ask_all(engine, model, 8))
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    assert httpx.get(f"{engine}/health", timeout=10).status_code == 200
