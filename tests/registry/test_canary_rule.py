"""The canary's decision rule: its error under continuous monitoring and its power, by simulation.

Each simulated canary is a stream of votes checked after every single vote (what "always valid"
must survive): 40 % decisive picks between canary and champion, the rest thumbs, 30 % of them on
the canary's answers. The rule runs vectorised over all streams and checks (``decide_many``, the
code ``decide`` runs). A control shows the harness catches a rule that is not valid: a fixed-sample
z-test peeked at after every vote.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from feedback.db.session import make_engine, session_factory
from feedback.events import utcnow
from feedback.filters import Pipeline
from registry.canary_rule import (
    CONTINUE,
    PROMOTE,
    ROLLBACK,
    CanaryEvidence,
    CanaryRule,
    decide,
    decide_many,
    evidence,
)
from serving.settings import ServingSettings
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings, store
from tests.registry.test_live_numbers import traffic

STREAMS = 2000
VOTES = 3000


def first_decisions(rule: CanaryRule | Callable[..., NDArray[np.int8]], streams: int, votes: int, p_pick: float,
                    up_canary: float, up_champion: float, canary_thumbs: float = 0.3, seed: int = 0,
                    ) -> tuple[NDArray[np.int8], NDArray[np.int64]]:
    """Each stream's first decision (CONTINUE if none within ``votes``) and the vote it came at (-1: none)."""
    rng = np.random.default_rng(seed)
    codes, at = [], []
    for start in range(0, streams, 250):
        m = min(250, streams - start)
        pick = rng.random((m, votes)) < 0.4
        on_canary = ~pick & (rng.random((m, votes)) < canary_thumbs)
        on_champion = ~pick & ~on_canary
        outcome = rng.random((m, votes))
        win = pick & (outcome < p_pick)
        counts = [win.cumsum(1), (pick & ~win).cumsum(1), (on_canary & (outcome < up_canary)).cumsum(1),
                  on_canary.cumsum(1), (on_champion & (outcome < up_champion)).cumsum(1), on_champion.cumsum(1)]
        checked = decide_many(rule, *counts) if isinstance(rule, CanaryRule) else rule(*counts)
        decided = checked != CONTINUE
        first = np.where(decided.any(1), decided.argmax(1), -1)
        codes.append(np.where(first >= 0, checked[np.arange(m), np.maximum(first, 0)], CONTINUE))
        at.append(first)
    return np.concatenate(codes).astype(np.int8), np.concatenate(at)


def test_equal_quality_canaries_are_wrongly_decided_at_most_alpha_of_the_time() -> None:
    rule = CanaryRule(alpha=0.05)
    codes, _ = first_decisions(rule, STREAMS, VOTES, p_pick=0.5, up_canary=0.7, up_champion=0.7)
    false_decisions = float(np.mean(codes != CONTINUE))
    assert false_decisions <= rule.alpha, false_decisions  # measured: 0.028 (0.015 rollbacks, 0.013 promotions)
    # The thumbs test alone (asymptotic) at its worst measured setting: a canary with 5 % of the thumbs, a 0.95
    # up rate, read from 10 thumbs per arm. Measured 0.036 (with each arm's own variance: 0.040 here and 0.057
    # at a 0.9 rate; pooled 0.024 there).
    thumbs_only = CanaryRule(alpha=0.05, pairwise_alpha_share=0, min_thumbs_per_arm=10)
    codes, _ = first_decisions(thumbs_only, STREAMS, VOTES, p_pick=0.5, up_canary=0.95, up_champion=0.95,
                               canary_thumbs=0.05, seed=1)
    assert float(np.mean(codes != CONTINUE)) <= thumbs_only.alpha


def test_the_harness_catches_a_rule_that_peeks() -> None:
    """A fixed-sample two-sided z-test on the picks at 5 %, read after every vote: far above 5 %."""

    def peeking(wins: NDArray[np.int64], losses: NDArray[np.int64], *_: NDArray[np.int64]) -> NDArray[np.int8]:
        n = np.maximum(wins + losses, 1)
        z = (wins - losses) / np.sqrt(n)
        return np.where((wins + losses >= 10) & (np.abs(z) >= 1.96), ROLLBACK, CONTINUE).astype(np.int8)

    codes, _ = first_decisions(peeking, 500, VOTES, p_pick=0.5, up_canary=0.7, up_champion=0.7)
    assert float(np.mean(codes != CONTINUE)) > 0.3


@pytest.mark.parametrize(("p_pick", "up_canary", "expected"), [(0.4, 0.6, ROLLBACK), (0.6, 0.8, PROMOTE)])
def test_a_clearly_worse_or_better_canary_is_found(p_pick: float, up_canary: float, expected: int) -> None:
    rule = CanaryRule()
    codes, at = first_decisions(rule, 500, VOTES, p_pick=p_pick, up_canary=up_canary, up_champion=0.7, seed=2)
    assert float(np.mean(codes == expected)) >= 0.95  # measured: 1.0 for both
    assert float(np.mean(codes == (PROMOTE if expected == ROLLBACK else ROLLBACK))) == 0  # never the wrong way
    assert float(np.median(at[codes == expected])) < 1000  # measured: about 500 votes (200 of them picks)


def one(wins: int = 0, losses: int = 0, canary: tuple[int, int] = (0, 0), champion: tuple[int, int] = (0, 0),
        elapsed: timedelta = timedelta(minutes=5)) -> CanaryEvidence:
    return CanaryEvidence("2", "1", wins, losses, canary[0], canary[1], champion[0], champion[1], elapsed)


def test_decide_waits_for_promotion_not_for_rollback_and_stops_at_the_deadline() -> None:
    rule = CanaryRule(min_votes_promote=200, max_duration=timedelta(hours=2))
    assert decide(rule, one(wins=60, losses=20)).action == "continue"  # strong, but 80 votes < 200
    promoted = decide(rule, one(wins=150, losses=60))
    assert promoted.action == "promote" and promoted.evidence["pairwise_log_lr"] > promoted.evidence[
        "pairwise_threshold"]
    assert decide(rule.model_copy(update={"promote": False}), one(wins=150, losses=60)).action == "continue"
    rolled = decide(rule, one(wins=15, losses=50))
    assert rolled.action == "rollback" and "15-50" in rolled.reason
    assert decide(rule, one(canary=(20, 60), champion=(420, 600))).action == "rollback"  # thumbs alone: 0.33 vs 0.7
    assert decide(rule, one(canary=(20, 25), champion=(420, 600))).action == "continue"  # 25 < 30 canary thumbs
    assert decide(rule, one(wins=5, losses=5, elapsed=timedelta(hours=2))).action == "stop"
    assert decide(rule, one(wins=15, losses=50, elapsed=timedelta(hours=3))).action == "rollback"  # evidence first
    assert rolled.evidence["rule"]["alpha"] == 0.05 and rolled.evidence["wins"] == 15


def test_the_rule_refuses_what_it_cannot_mean() -> None:
    for bad in ({"alpha": 0}, {"alpha": 0.5}, {"pairwise_mixture_sd": 0.5}, {"thumbs_mixture_sd": 0},
                {"min_votes_promote": -1}, {"max_duration": "PT0S"}, {"pairwise_alpha_share": 1.5}, {"alhpa": 0.1}):
        with pytest.raises(ValidationError):
            CanaryRule(**bad)  # type: ignore[arg-type]
    rule = CanaryRule(max_duration="PT6H")  # type: ignore[arg-type]  # ISO 8601, as from a settings file
    assert rule.max_duration == timedelta(hours=6) and rule.beta_a == pytest.approx(12.0)
    assert CanaryRule.model_fields["alpha"].description


def test_evidence_is_read_from_accepted_feedback_since_the_canary_began(
    db_url: str, make_app: Callable[[str], int], build: EventBuilder, tmp_path: Path,
) -> None:
    sessions = session_factory(make_engine(db_url))
    app_id, other_app = make_app(db_url), make_app(db_url)
    pipeline = Pipeline(filter_settings(timing_min_ms=0, timing_ms_per_char=0))
    store(sessions, pipeline, traffic(build, app_id, other_app))  # five minutes ago: before the canary
    since = utcnow()
    store(sessions, pipeline, traffic(build, app_id, other_app, at=since + timedelta(seconds=1)))
    with sessions() as session:
        seen = evidence(session, "2", "1", since, since + timedelta(minutes=10))
    assert (seen.wins, seen.losses, seen.canary_ups, seen.canary_thumbs, seen.champion_ups, seen.champion_thumbs) == (
        3, 5, 2, 10, 6, 10)
    assert seen.elapsed == timedelta(minutes=10)


def test_the_gateway_takes_the_rule_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_CANARY_RULE", '{"alpha": 0.01, "max_duration": "PT1H", "promote": false}')
    rule = ServingSettings(_env_file=None).canary_rule  # type: ignore[call-arg]
    assert (rule.alpha, rule.max_duration, rule.promote, rule.min_votes_promote) == (0.01, timedelta(hours=1),
                                                                                     False, 200)
    monkeypatch.setenv("FLYWHEEL_CANARY_RULE", '{"alpha": 2}')
    with pytest.raises(ValidationError, match="alpha"):
        ServingSettings(_env_file=None)  # type: ignore[call-arg]
