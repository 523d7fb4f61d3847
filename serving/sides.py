"""One pair from two versions: each side asked of its own engine model, joined as one two-choice answer.

During a canary a pair pits the champion against the canary, so its two answers cannot come
from one ``n=2`` engine call. Each side is asked with ``n=1`` under its version's engine model,
and the two results are presented as the single answer an ``n=2`` call gives: side A is choice
0, side B choice 1, and the usage counts the prompt once and both answers' tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any


def joined_usage(usages: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The usage of one ``n=2`` call: the prompt counted once, the answers' tokens summed."""
    present = [u for u in usages if u]
    if not present:
        return None
    prompt = int(present[0].get("prompt_tokens") or 0)
    completion = sum(int(u.get("completion_tokens") or 0) for u in present)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def joined(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Engine results, one per side, as one result whose choice ``i`` is side ``i``'s first choice."""
    choices = [{**result["choices"][0], "index": side} for side, result in enumerate(results)]
    return {**results[0], "choices": choices, "usage": joined_usage([r.get("usage") for r in results])}


async def merged(streams: Sequence[AsyncIterator[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    """Engine streams, one per side, as one stream: chunks in arrival order, each choice's index its side.

    Each side's usage-only chunk is held back and one joined usage chunk ends the stream, as an
    ``n=2`` stream ends. A side that fails raises here; closing this stream stops both sides.
    """
    queue: asyncio.Queue[tuple[int, dict[str, Any] | None, BaseException | None]] = asyncio.Queue()

    async def pump(side: int, stream: AsyncIterator[dict[str, Any]]) -> None:
        try:
            async for chunk in stream:
                await queue.put((side, chunk, None))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((side, None, exc))
            return
        await queue.put((side, None, None))

    tasks = [asyncio.create_task(pump(side, stream)) for side, stream in enumerate(streams)]
    usages: dict[int, dict[str, Any]] = {}
    last: dict[str, Any] = {}
    try:
        finished = 0
        while finished < len(tasks):
            side, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is None:
                finished += 1
                continue
            if chunk.get("usage"):
                usages[side] = chunk["usage"]
            choices = [{**choice, "index": side} for choice in chunk.get("choices") or []]
            if choices:
                last = chunk
                yield {**{k: v for k, v in chunk.items() if k != "usage"}, "choices": choices}
        usage = joined_usage([usages.get(side) for side in range(len(tasks))])
        if usage is not None:
            head = {k: v for k, v in last.items() if k != "usage"}
            yield {"object": "chat.completion.chunk", **head, "choices": [], "usage": usage}
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
