"""Dependencies injected into the routers: the gateway's shared state, the caller, and the body check."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from feedback.apps import Caller, find_caller, hash_key
from feedback.events import Event, FeedbackEvent
from feedback.outbox import Outbox, OutboxFull, Relay
from feedback.producer import EventProducer
from feedback.storable import first_unstorable
from feedback.store import find_verdict
from registry.promotion import Promotion
from serving.champion import ChampionWatcher
from serving.engine import EngineClient
from serving.feedback_tokens import FeedbackTokens, Grant, is_feedback_token
from serving.metrics import RECORD_FAILURES
from serving.ratelimit import RateLimiter
from serving.settings import ServingSettings

SENT_MEMORY = 100_000
"""How many recently acknowledged feedback events a gateway remembers, so their verdict can read "pending"."""


@dataclass
class GatewayState:
    settings: ServingSettings
    sessions: sessionmaker[Session]
    engine: EngineClient
    producer: EventProducer
    outbox: Outbox
    relay: Relay
    registry: Promotion
    watcher: ChampionWatcher
    tokens: FeedbackTokens
    # key hash -> (caller, verified at): a key is looked up in the database at most once per TTL.
    key_cache: dict[str, tuple[Caller, float]] = field(default_factory=dict)
    # (app id, event id) of feedback this gateway got acknowledged, oldest first, at most SENT_MEMORY.
    sent: OrderedDict[tuple[int, str], None] = field(default_factory=OrderedDict)
    limiter: RateLimiter = field(init=False)
    # (app id, event id) of feedback-token votes being recorded right now: a token's second use waits for none.
    claimed: set[tuple[int, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)

    async def record(self, events: Sequence[Event]) -> None:
        """Commit events to the durable outbox (the relay puts them on the broker), so they may be acknowledged.

        A full outbox refuses them: counted per kind (``flywheel_record_failures_total``) and raised (503).
        """
        try:
            await asyncio.to_thread(self.outbox.put, events)
        except OutboxFull:
            for kind, n in Counter(event.type for event in events).items():
                RECORD_FAILURES.labels(kind).inc(n)
            raise
        self.relay.wake()
        for event in events:
            if event.type != "completion":
                self.sent[(event.app_id, event.event_id)] = None
        while len(self.sent) > SENT_MEMORY:
            self.sent.popitem(last=False)

    async def record_once(self, event: FeedbackEvent) -> None:
        """Record the one vote a feedback token allows; 409 if that vote was already recorded.

        Known from this gateway's memory of what it acknowledged (or is recording now) and from the
        store. Another gateway's acknowledgement not yet stored is not seen here: the worker's idempotent
        store then keeps the second copy (same app and event id) from counting.
        """
        key = (event.app_id, event.event_id)
        if key in self.sent or key in self.claimed:
            raise _reused(event.event_id)
        self.claimed.add(key)
        try:
            def stored() -> bool:
                with self.sessions() as session:
                    return find_verdict(session, *key) is not None

            if await asyncio.to_thread(stored):
                raise _reused(event.event_id)
            await self.record([event])
        finally:
            self.claimed.discard(key)

    async def authenticate(self, key: str) -> Caller | None:
        digest = hash_key(key)
        cached = self.key_cache.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.settings.key_cache_seconds:
            return cached[0]

        def lookup() -> Caller | None:
            with self.sessions() as session:
                return find_caller(session, key)

        caller = await asyncio.to_thread(lookup)
        if caller is not None:
            self.key_cache[digest] = (caller, now)
        return caller


def _reused(event_id: str) -> HTTPException:
    return HTTPException(409, f"this feedback token was already used: its vote is recorded as event {event_id}")


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]
_bearer = HTTPBearer(auto_error=False)


async def get_caller(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    if credentials is None:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'")
    if is_feedback_token(credentials.credentials):
        raise HTTPException(401, "a feedback token is accepted by POST /v1/feedback only, for its one vote")
    caller = await state.authenticate(credentials.credentials)
    if caller is None:
        raise HTTPException(401, "invalid or revoked API key")
    return caller


async def get_app_caller(caller: Annotated[Caller, Depends(get_caller)], state: StateDep) -> Caller:
    """The caller of an app route (``/v1``), counted against its app's rate limit (429 beyond it).

    Admin routes are not limited: ops must be able to roll back while an app floods the gateway.
    """
    state.limiter.check(caller.app_id)
    return caller


CallerDep = Annotated[Caller, Depends(get_app_caller)]


@dataclass(frozen=True)
class Voter:
    """Who sends a vote: an app by its key, or a browser by a feedback token (``grant``: the one vote it allows)."""

    caller: Caller
    grant: Grant | None = None


async def get_voter(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Voter:
    """An app key, or a feedback token (401 if forged or expired), counted against the app's rate limit."""
    if credentials is None or not is_feedback_token(credentials.credentials):
        return Voter(await get_app_caller(await get_caller(state, credentials), state))
    grant = state.tokens.verify(credentials.credentials)
    state.limiter.check(grant.app_id)
    return Voter(Caller(grant.app_id, name="feedback-token", is_admin=False), grant)


VoterDep = Annotated[Voter, Depends(get_voter)]


async def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise HTTPException(403, "this needs an admin key (flywheel apps create NAME --admin)")
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]


async def storable_body(request: Request) -> None:
    """Refuse (400) a JSON body holding text the store cannot keep: a NUL character or a lone surrogate.

    Checked on every route, over the whole body, extra fields included (they travel on to the
    engine and into the completion record), so such text never reaches Kafka or the database.
    A body that is not JSON is left to the route's own validation.
    """
    if "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = await request.json()
    except ValueError:
        return
    problem = first_unstorable(body)
    if problem is not None:
        raise HTTPException(400, problem)
