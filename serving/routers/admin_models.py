"""``/admin/models``: versions, promote, rollback, canary, history. Admin keys only; every move is audited.

The gateway that takes a promotion (or a canary) switches at once; every other gateway follows
within its poll interval, since all of them read the same registry aliases.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query

from registry.canary_judge import CanaryJudge
from registry.live import ServedAnswer, last_answer
from registry.promotion import Canary, VersionInfo
from serving.canary import version_for
from serving.deps import AdminDep, GatewayState, StateDep
from serving.errors import responses
from serving.protocol import (
    AliasMoveOut,
    AliasMoveRequest,
    CanaryOut,
    CanaryRequest,
    CanaryStatus,
    CanaryStopped,
    ChampionMoved,
    ServedAnswerOut,
    ServingAtOut,
)

router = APIRouter(prefix="/admin/models", tags=["admin"])

MoveBody = Annotated[AliasMoveRequest | None, Body(description="Optional: why, for the audit trail.")]


@router.get("", responses=responses(401, 403))
async def list_versions(_admin: AdminDep, state: StateDep) -> list[VersionInfo]:
    """Every version with aliases, tags, held-out metrics and live numbers from accepted feedback: thumbs-up rate,
    picks against the current champion (win rate over decisive picks), each with a 95 % Wilson interval; answers,
    mean answer length and latency."""
    return await asyncio.to_thread(state.registry.live_versions)


@router.get("/history", responses=responses(400, 401, 403))
async def history(
    _admin: AdminDep, state: StateDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[AliasMoveOut]:
    moves = await asyncio.to_thread(state.registry.history, limit)
    return [AliasMoveOut.model_validate(m, from_attributes=True) for m in moves]


@router.get("/canary", responses=responses(401, 403))
async def canary_status(_admin: AdminDep, state: StateDep) -> CanaryStatus:
    """The running canary and what the rule (FLYWHEEL_CANARY_RULE) decides on its evidence so far."""
    looked = await asyncio.to_thread(CanaryJudge(state.registry, state.settings.canary_rule).look)
    automatic = state.settings.canary_check_seconds > 0
    if looked is None:
        return CanaryStatus(version=None, percent=None, since=None, serving=False, automatic=automatic)
    canary, decision = looked
    loaded = state.watcher.canary
    return CanaryStatus(version=canary.version, percent=canary.percent, since=canary.since,
                        serving=loaded is not None and loaded.route.version == canary.version, automatic=automatic,
                        decision=decision.action, reason=decision.reason, evidence=decision.evidence)


@router.get("/history/at", responses=responses(400, 401, 403))
async def serving_at(
    _admin: AdminDep, state: StateDep,
    time: Annotated[datetime, Query(description="The moment, ISO 8601 (naive: UTC).")],
    user: Annotated[str | None, Query(max_length=256, description="An end user: which version answered them.")] = None,
) -> ServingAtOut:
    """Which version was champion, and which canary at what percent, at ``time``; with ``user``, which answered them."""
    then = await asyncio.to_thread(state.registry.serving_at, time)

    def answered() -> ServedAnswer | None:
        with state.sessions() as session:
            return last_answer(session, user, then.at) if user else None

    served = await asyncio.to_thread(answered)
    return ServingAtOut(
        at=then.at, champion=then.champion, champion_since=then.champion_since, canary=then.canary,
        canary_percent=then.canary_percent, canary_since=then.canary_since, user=user,
        user_version=version_for(user, then.champion, then.canary, then.canary_percent) if user else None,
        last_answer=ServedAnswerOut.model_validate(served, from_attributes=True) if served else None,
    )


@router.post("/{version}/promote", responses=responses(400, 401, 403, 409))
async def promote(version: str, admin: AdminDep, state: StateDep, body: MoveBody = None) -> ChampionMoved:
    """Make ``version`` the champion; 409 if it does not exist or already is."""
    reason = body.reason if body else None
    await asyncio.to_thread(state.registry.promote, version, admin.actor, reason)
    route = await state.watcher.refresh()
    return ChampionMoved(champion=version, serving=route.version if route else "")


@router.post("/rollback", responses=responses(400, 401, 403, 409))
async def rollback(admin: AdminDep, state: StateDep, body: MoveBody = None) -> ChampionMoved:
    """Return the champion to the version it replaced; 409 if there is none."""
    version = await asyncio.to_thread(state.registry.rollback, admin.actor, body.reason if body else None)
    route = await state.watcher.refresh()
    return ChampionMoved(champion=version, serving=route.version if route else "")


@router.post("/{version}/canary", responses=responses(400, 401, 403, 409))
async def start_canary(version: str, body: CanaryRequest, admin: AdminDep, state: StateDep) -> CanaryOut:
    """Send ``percent`` % of end users (sticky per ``user``) to ``version``, or change the canary's percent.

    409 if the version does not exist, is the champion, or already is the canary at that percent.
    """
    canary = await asyncio.to_thread(state.registry.start_canary, version, body.percent, admin.actor, body.reason)
    return await _canary_out(state, canary)


@router.post("/canary/stop", responses=responses(400, 401, 403, 409))
async def stop_canary(admin: AdminDep, state: StateDep, body: MoveBody = None) -> CanaryStopped:
    """End the canary: every user is back on the champion. 409 if none runs."""
    version = await asyncio.to_thread(state.registry.stop_canary, admin.actor, body.reason if body else None)
    await state.watcher.refresh()
    return CanaryStopped(stopped=version)


async def _canary_out(state: GatewayState, canary: Canary) -> CanaryOut:
    """The canary as the registry holds it, after this gateway followed it (so ``serving`` tells if it loaded)."""
    route = await state.watcher.refresh()
    loaded = state.watcher.canary
    return CanaryOut(version=canary.version, percent=canary.percent, since=canary.since,
                     champion=route.version if route else "",
                     serving=loaded is not None and loaded.route.version == canary.version)
