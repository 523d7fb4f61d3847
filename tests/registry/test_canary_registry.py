"""The canary alias and its percent move like the champion: under the lock, audited, all or nothing.

On SQLite and PostgreSQL with a real MLflow store. The percent lives on the audited move (MLflow
aliases hold only a version), so the canary's state and "what served at time T" are read back from
the store, and a champion move that makes the canary's version champion ends the canary with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from registry.model_versions import CANARY, CHAMPION
from registry.promotion import CANARY_ROLLBACK, CANARY_START, CANARY_STOP, Promotion, RegistryError


def bootstrapped(promotion: Callable[[], Promotion]) -> Promotion:
    registry = promotion()
    registry._move(CHAMPION, "1", action="bootstrap", actor="system", reason=None)
    return registry


def moment() -> datetime:
    """Now, then a pause: moves on either side of it are apart even at SQLite's stored precision."""
    now = datetime.now(UTC)
    time.sleep(0.02)
    return now


def test_a_canary_starts_changes_percent_and_stops_audited(promotion: Callable[[], Promotion]) -> None:
    registry = bootstrapped(promotion)
    assert registry.canary() is None
    started = registry.start_canary("2", 10, "ops", "try v2 on a few")
    assert (started.version, started.percent) == ("2", 10.0)
    assert str(registry.alias_version(CANARY).version) == "2"  # type: ignore[union-attr]

    widened = promotion().start_canary("2", 25.5, "ops")  # another process reads the same state
    assert (widened.version, widened.percent, widened.since) == ("2", 25.5, started.since)
    replaced = registry.start_canary("3", 5, "ops")  # one canary at a time: v3 replaces v2
    assert replaced.since > started.since

    assert registry.stop_canary("ops", "enough") == "3"
    assert registry.canary() is None and registry.alias_version(CANARY) is None
    assert str(registry.champion().version) == "1"  # a canary never moves the champion
    moves = [(m.alias, m.action, m.from_version, m.to_version, m.percent, m.actor)
             for m in reversed(registry.history())]
    assert moves == [
        (CHAMPION, "bootstrap", None, "1", None, "system"),
        (CANARY, CANARY_START, None, "2", 10.0, "ops"),
        (CANARY, CANARY_START, "2", "2", 25.5, "ops"),
        (CANARY, CANARY_START, "2", "3", 5.0, "ops"),
        (CANARY, CANARY_STOP, "3", "3", 0.0, "ops"),
    ]


def test_what_a_canary_cannot_be(promotion: Callable[[], Promotion]) -> None:
    registry = promotion()
    with pytest.raises(RegistryError, match="no champion"):
        registry.start_canary("2", 10, "ops")
    registry = bootstrapped(promotion)
    for version, percent, match in [("1", 10, "is the champion"), ("9", 10, "no version"),
                                    ("2", 0, "above 0"), ("2", 100.5, "at most 100"), ("2", -3, "above 0")]:
        with pytest.raises(RegistryError, match=match):
            registry.start_canary(version, percent, "ops")
    with pytest.raises(RegistryError, match="no canary running"):
        registry.stop_canary("ops")
    registry.start_canary("2", 10, "ops")
    with pytest.raises(RegistryError, match="already the canary at 10 %"):
        registry.start_canary("2", 10, "ops")
    assert [m.action for m in registry.history()] == [CANARY_START, "bootstrap"]  # refusals wrote nothing


def test_promoting_or_rolling_back_to_the_canary_ends_it_in_the_same_move(
    promotion: Callable[[], Promotion],
) -> None:
    registry = bootstrapped(promotion)
    registry.start_canary("2", 20, "ops")
    registry.promote("3", "ops")  # another version: the canary keeps running
    assert registry.canary() is not None
    registry.promote("2", "ops", "the canary won")
    assert registry.canary() is None and registry.alias_version(CANARY) is None
    newest = registry.history(limit=2)
    assert [(m.alias, m.action, m.to_version, m.percent) for m in newest] == [
        (CANARY, CANARY_STOP, "2", 0.0), (CHAMPION, "promote", "2", None)]
    assert "became champion (promote)" in (newest[0].reason or "")

    registry.start_canary("3", 50, "ops")  # 3 was the champion 2 replaced: rolling back to it ends its canary
    assert registry.rollback("ops") == "3"
    assert registry.canary() is None and str(registry.champion().version) == "3"


def test_a_failed_commit_puts_back_both_aliases(promotion: Callable[[], Promotion]) -> None:
    registry = bootstrapped(promotion)
    registry.start_canary("2", 20, "ops")

    @event.listens_for(registry.factory, "before_commit")
    def store_fails(_session: Session) -> None:
        raise RuntimeError("the store went away at commit")

    with pytest.raises(RuntimeError, match="went away"):
        registry.promote("2", "ops")
    with pytest.raises(RuntimeError, match="went away"):
        registry.stop_canary("ops")
    event.remove(registry.factory, "before_commit", store_fails)
    assert str(registry.champion().version) == "1"
    canary = registry.canary()
    assert canary is not None and (canary.version, canary.percent) == ("2", 20.0)
    assert [m.action for m in registry.history()] == [CANARY_START, "bootstrap"]


def test_an_alias_set_by_hand_in_mlflow_gets_no_traffic(promotion: Callable[[], Promotion]) -> None:
    registry = bootstrapped(promotion)
    registry.client.set_registered_model_alias(registry.name, CANARY, "4")
    canary = registry.canary()
    assert canary is not None and (canary.version, canary.percent) == ("4", 0.0)


def test_serving_at_answers_from_the_audit_trail(promotion: Callable[[], Promotion]) -> None:
    before_all = moment()
    registry = bootstrapped(promotion)
    after_bootstrap = moment()
    registry.start_canary("2", 10, "ops")
    during_10 = moment()
    registry.start_canary("2", 30, "ops")
    during_30 = moment()
    registry.stop_canary("ops")
    after_stop = moment()
    registry.start_canary("3", 40, "ops")
    registry.promote("3", "ops")
    after_promotion = moment()

    empty = registry.serving_at(before_all)
    assert (empty.champion, empty.canary, empty.canary_percent) == (None, None, None)
    assert (registry.serving_at(after_bootstrap).champion, registry.serving_at(after_bootstrap).canary) == ("1", None)
    ten, thirty = registry.serving_at(during_10), registry.serving_at(during_30)
    assert (ten.champion, ten.canary, ten.canary_percent) == ("1", "2", 10.0)
    assert (thirty.champion, thirty.canary, thirty.canary_percent) == ("1", "2", 30.0)
    assert thirty.canary_since == ten.canary_since and ten.canary_since is not None
    assert ten.canary_since < during_10
    stopped = registry.serving_at(after_stop)
    assert (stopped.champion, stopped.canary, stopped.canary_percent) == ("1", None, None)
    promoted = registry.serving_at(after_promotion)
    assert (promoted.champion, promoted.canary) == ("3", None)
    # Any time zone names the same moment.
    assert registry.serving_at(during_10.astimezone(timezone(timedelta(hours=-7)))).canary_percent == 10.0


def test_an_automatic_decision_applies_only_to_the_canary_it_judged(promotion: Callable[[], Promotion]) -> None:
    """Two gateways judging the same canary, or ops moving it meanwhile: only a decision about the running one lands."""
    registry = bootstrapped(promotion)
    judged = registry.start_canary("2", 10, "ops")
    registry.stop_canary("ops")
    time.sleep(0.01)
    running = registry.start_canary("2", 10, "ops")  # the same version again, a new canary
    with pytest.raises(RegistryError, match="no longer runs"):
        registry.conclude_canary(judged, "rollback", "system:canary", "worse", {"wins": 1})
    with pytest.raises(ValueError, match="not 'pause'"):
        registry.conclude_canary(running, "pause", "system:canary", "?", {})
    registry.conclude_canary(running, "rollback", "system:canary", "worse", {"wins": 1, "losses": 9})
    with pytest.raises(RegistryError, match="no longer runs"):  # the second gateway's identical decision
        registry.conclude_canary(running, "rollback", "system:canary", "worse", {"wins": 1, "losses": 9})
    move = registry.history(limit=1)[0]
    assert (move.action, move.actor, move.evidence, move.percent) == (
        CANARY_ROLLBACK, "system:canary", {"wins": 1, "losses": 9}, 0.0)
    assert registry.canary() is None and str(registry.champion().version) == "1"
