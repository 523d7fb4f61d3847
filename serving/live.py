"""The live numbers per version in Prometheus, and the canary rule applied, both on timers.

Each gateway publishes what the store says (``registry.live``) every ``FLYWHEEL_LIVE_NUMBERS_SECONDS``,
so any of them answers a scrape; the figures are the same ones ``/admin/models`` and ``flywheel
models list`` show. Every ``FLYWHEEL_CANARY_CHECK_SECONDS`` each gateway applies the canary rule
(``registry.canary_judge``); the registry lets only the first decision about a canary through.
Counting happens in the database, off the event loop; a failed read is logged and retried.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Gauge

from registry.canary_judge import CanaryJudge
from registry.live import Proportion, head_to_head, version_numbers
from serving.champion import ChampionWatcher
from serving.metrics import (
    ANSWER_CHARS,
    CANARY_DECISIONS,
    CANARY_PICKS,
    CANARY_WIN_RATE,
    THUMBS_UP_RATE,
    THUMBS_VOTES,
)

log = logging.getLogger(__name__)


def publish_once(watcher: ChampionWatcher) -> None:
    """Set the gauges from the store: every version's thumbs and length, the running canary's picks."""
    champion, canary = watcher.current, watcher.canary
    with watcher.registry.factory() as session:
        numbers = version_numbers(session)
        meetings = head_to_head(session, since=canary.since) if canary is not None else {}
    for version, live in numbers.items():
        THUMBS_VOTES.labels(model_version=version).set(live.thumbs_up.trials)
        _set_bounds(live.thumbs_up, THUMBS_UP_RATE, model_version=version)
        if live.mean_answer_chars is not None:
            ANSWER_CHARS.labels(model_version=version).set(live.mean_answer_chars)
    CANARY_WIN_RATE.clear()
    CANARY_PICKS.clear()
    if canary is None or champion is None:
        return
    meeting = meetings.get((canary.route.version, champion.version))
    if meeting is None:
        return
    for outcome, n in (("win", meeting.wins), ("loss", meeting.losses), ("tie", meeting.ties),
                       ("both_bad", meeting.both_bad)):
        CANARY_PICKS.labels(outcome=outcome).set(n)
    _set_bounds(meeting.win_rate, CANARY_WIN_RATE)


def _set_bounds(proportion: Proportion, gauge: Gauge, **labels: str) -> None:
    """The estimate and interval bounds as the gauge's ``bound`` label; none without votes."""
    values = {"estimate": proportion.estimate, "low": proportion.low, "high": proportion.high}
    for bound, value in values.items():
        if value is not None:
            gauge.labels(**labels, bound=bound).set(value)


async def publish(watcher: ChampionWatcher, every_s: float) -> None:
    """Publish forever; a failed read keeps the last figures."""
    while True:
        try:
            await asyncio.to_thread(publish_once, watcher)
        except Exception:
            log.exception("could not read the live numbers from the store; Prometheus keeps the last ones")
        await asyncio.sleep(every_s)


async def judge(judge: CanaryJudge, watcher: ChampionWatcher, every_s: float) -> None:
    """Apply the canary rule forever; after a decision this gateway follows the aliases at once."""
    while True:
        try:
            decision = await asyncio.to_thread(judge.check)
            if decision is not None and decision.action != "continue":
                CANARY_DECISIONS.labels(action=decision.action).inc()
                await watcher.refresh()
        except Exception:
            log.exception("could not apply the canary rule; retried in %s s", every_s)
        await asyncio.sleep(every_s)
