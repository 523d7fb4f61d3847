"""Drive a real gateway with a scenario's users and record the ground truth of every vote.

Each account is one asyncio task: ask, read (really wait, scaled by ``time_scale``), vote,
pause, repeat. Waiting costs nothing, so hundreds of accounts read concurrently. Only chats
are bounded (``concurrency``), which keeps the CPU engine from being swamped; votes are cheap
and never queue behind chats, so the gap the gateway sees between an answer and its vote is
the user's own (a bot's vote arrives at once, as it would in the wild).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from feedback.events import new_event_id, utcnow
from flywheel.simulation.scenario import ChatOptions, Scenario
from flywheel.simulation.truth import TruthRecord, TruthWriter
from flywheel.simulation.users import Served, SimUser, Vote, plan_users

RETRIES = 3  # for 5xx and dropped connections; 4xx means the run is misconfigured and stops it


class GatewayRejected(RuntimeError):
    """The gateway refused a request as invalid (4xx): a wrong key or model name, not bad luck."""


class GatewayUnavailable(RuntimeError):
    """The gateway kept failing (5xx or no connection) after retries; that one event is skipped."""


@dataclass
class RunSummary:
    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    unvoted: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class GatewayClient:
    """The two calls an app makes for its users: a chat, and a vote on what came back."""

    def __init__(self, http: httpx.AsyncClient, model: str, chat: ChatOptions, concurrency: int) -> None:
        self.http = http
        self.model = model
        self.chat_options = chat
        self.slots = asyncio.Semaphore(concurrency)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(RETRIES + 1):
            try:
                response = await self.http.post(path, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    result: dict[str, Any] = response.json()
                    return result
                if response.status_code < 500:
                    raise GatewayRejected(f"POST {path} -> {response.status_code}: {response.text[:300]}")
                problem = f"{response.status_code}: {response.text[:300]}"
            if attempt < RETRIES:
                await asyncio.sleep(0.5 * 2**attempt)
        raise GatewayUnavailable(f"POST {path} failed {RETRIES + 1} times; last: {problem}")

    async def ask(self, user_id: str, messages: list[dict[str, Any]], pairwise: bool) -> Served:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "user": user_id,
                                **self.chat_options.model_dump()}
        if pairwise:
            body["flywheel"] = {"pairwise": True}
        async with self.slots:
            answer = await self._post("/v1/chat/completions", body)
        meta = answer["flywheel"]
        texts = tuple(c["message"].get("content") or "" for c in sorted(answer["choices"], key=lambda c: c["index"]))
        if pairwise:
            return Served(texts, tuple(meta["response_ids"]), meta["pair_id"])
        return Served(texts, (meta["response_id"],))

    async def vote(self, user_id: str, event_id: str, served: Served, vote: Vote) -> None:
        body: dict[str, Any] = {"event_id": event_id, "user_id": user_id}
        if served.pair_id is not None:
            body |= {"type": "pairwise", "pair_id": served.pair_id, "choice": vote.value}
        else:
            body |= {"type": "thumbs", "response_id": served.response_ids[0], "rating": vote.value}
        await self._post("/v1/feedback", body)


async def _act(
    user: SimUser,
    client: GatewayClient,
    scenario: Scenario,
    truth: TruthWriter,
    summary: RunSummary,
    on_event: Callable[[], None],
) -> None:
    """One account's whole session: its questions, each read for a human time and voted on (a ``vote_share`` of
    them; the rest are read and left, as most answers in an app are)."""
    scale = scenario.time_scale
    await asyncio.sleep(user.start_delay * scale)
    for _ in range(user.group.events_per_user):
        prompt, messages = user.prompt()
        try:
            served = await client.ask(user.user_id, messages, user.wants_pair())
            answered = time.monotonic()
            vote = user.vote(messages[-1]["content"], served)
            preferred = user.verdict(messages[-1]["content"], served)
            await asyncio.sleep(user.timing.reading(served.chars, user.rng) * scale)
            event_id = new_event_id()
            read = time.monotonic() - answered
            voted = user.votes_on(scenario.vote_share)
            if voted:
                await client.vote(user.user_id, event_id, served, vote)
        except GatewayUnavailable:
            summary.failed[user.user_type] += 1
        else:
            if voted:
                truth.write(TruthRecord(
                    event_id=event_id, user_id=user.user_id, user_type=user.user_type, adversarial=user.adversarial,
                    poisoned=vote.poisoned, preferred=preferred, type="pairwise" if served.pair_id else "thumbs",
                    vote=vote.value,
                    target_id=served.pair_id or served.response_ids[0], prompt_id=prompt.id,
                    reading_seconds=round(read, 3), sent_at=utcnow(), scenario=scenario.name,
                ))
                summary.sent[user.user_type] += 1
            else:
                summary.unvoted[user.user_type] += 1
        on_event()
        await asyncio.sleep(user.timing.think(user.rng) * scale)


async def run_scenario(
    scenario: Scenario,
    gateway: str,
    key: str,
    truth: TruthWriter,
    *,
    model: str = "flywheel",
    on_event: Callable[[], None] = lambda: None,
) -> RunSummary:
    """Run every account of ``scenario`` against ``gateway`` until all have voted; truth goes to ``truth``.

    ``on_event`` is called after each attempted vote (sent or failed), for a progress bar.
    A ``GatewayRejected`` stops the whole run: every later request would be refused too.
    """
    summary = RunSummary()
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {key}"}
    # Chats queue on the client's semaphore, not in the pool (which would hold votes back behind them);
    # a chat may take the engine's full timeout.
    timeout = httpx.Timeout(330.0, connect=10.0, pool=None)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=scenario.concurrency * 2)
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=timeout, limits=limits) as http:
        client = GatewayClient(http, model, scenario.chat, scenario.concurrency)
        tasks = [
            asyncio.create_task(_act(user, client, scenario, truth, summary, on_event))
            for user in plan_users(scenario)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    summary.seconds = time.monotonic() - started
    return summary
