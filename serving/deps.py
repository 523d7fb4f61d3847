"""Dependencies injected into the routers: the gateway's shared state, the caller, and the body check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from feedback.apps import Caller, find_caller, hash_key
from feedback.producer import EventProducer
from feedback.promotion import Promotion
from feedback.storable import first_unstorable
from serving.champion import ChampionWatcher
from serving.engine import EngineClient
from serving.settings import ServingSettings


@dataclass
class GatewayState:
    settings: ServingSettings
    sessions: sessionmaker[Session]
    engine: EngineClient
    producer: EventProducer
    registry: Promotion
    watcher: ChampionWatcher
    # key hash -> (caller, verified at): a key is looked up in the database at most once per TTL.
    key_cache: dict[str, tuple[Caller, float]] = field(default_factory=dict)

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
    caller = await state.authenticate(credentials.credentials)
    if caller is None:
        raise HTTPException(401, "invalid or revoked API key")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_admin(caller: CallerDep) -> Caller:
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
