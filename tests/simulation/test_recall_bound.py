"""The oracle of tests/bench/recall_bound.py: the reference the filters' recall is read against."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flywheel.simulation.report import Whereabouts
from flywheel.simulation.truth import TruthRecord
from tests.bench.recall_bound import Account, accounts, bound, hindsight, oracle_flags, recall, slip_rate


def _record(n: int, user: str, user_type: str, vote: str, preferred: str | None) -> TruthRecord:
    return TruthRecord(event_id=f"e{n}", user_id=user, user_type=user_type,  # type: ignore[arg-type]
                       adversarial=user_type != "honest", poisoned=vote != preferred, preferred=preferred,
                       type="thumbs", vote=vote, target_id=f"r{n}", prompt_id="p", reading_seconds=1.0,
                       sent_at=datetime(2026, 12, 6, tzinfo=UTC), scenario="slow_attacker")


def test_the_oracle_flags_by_the_tail_of_honest_slips() -> None:
    assert not oracle_flags(Account("honest", False, 40, 2, 0), 0.05, 0.02)
    assert oracle_flags(Account("slow_attacker", True, 40, 12, 0), 0.05, 0.02)
    # 5 of 40 against the taste: an honest user slipping at 5 % does that with a chance near 5 %, over the budget
    assert not oracle_flags(Account("slow_attacker", True, 40, 5, 0), 0.05, 0.02)
    assert oracle_flags(Account("slow_attacker", True, 40, 5, 0), 0.05, 0.05)
    assert not oracle_flags(Account("slow_attacker", True, 10, 0, 0), 0.05, 0.02)


def test_either_counts_an_account_the_oracle_flags_whole_and_else_what_the_filters_caught() -> None:
    found = [Account("slow_attacker", True, 40, 12, 10), Account("slow_attacker", True, 40, 4, 40),
             Account("slow_attacker", True, 20, 2, 0), Account("honest", False, 40, 1, 0)]
    rows = {r.user_type: r for r in bound(found, 0.05)}
    attackers = rows["slow_attacker"]
    assert (attackers.votes, attackers.filters, attackers.oracle, attackers.either) == (100, 50, 40, 80)
    assert rows["honest"].oracle == 0
    assert recall(list(rows.values()), "either") == 0.8 and recall(list(rows.values()), "filters") == 0.5


def test_votes_are_counted_against_the_tastes_verdict_and_old_truth_files_are_refused() -> None:
    records = [_record(1, "u1", "slow_attacker", "down", "up"), _record(2, "u1", "slow_attacker", "up", "up"),
               _record(3, "u2", "honest", "up", "up")]
    found = accounts(records, Whereabouts(accepted={"e2", "e3"}, quarantined={"e1": ["against_consensus"]}))
    assert sorted((a.user_type, a.votes, a.against, a.quarantined) for a in found) == [
        ("honest", 1, 0, 0), ("slow_attacker", 2, 1, 1)]
    with pytest.raises(ValueError, match="preferred"):
        accounts([_record(4, "u3", "honest", "up", None)], Whereabouts())


def test_the_slip_rate_is_the_scenarios() -> None:
    assert slip_rate("slow_attacker") == 0.05


def test_hindsight_is_the_best_threshold_that_keeps_honest_votes_within_the_target() -> None:
    """Twenty honest accounts of ten votes, one of them unlucky (3 slips): flagging it is 5 % of honest votes."""
    honest = [Account("honest", False, 10, 0, 0)] * 19 + [Account("honest", False, 10, 3, 0)]
    strong, weak = Account("slow_attacker", True, 40, 16, 0), Account("slow_attacker", True, 40, 5, 0)
    # the weak attacker's tail (5 of 40) is above the unlucky honest account's (3 of 10): out of reach
    assert hindsight([*honest, strong, weak], 0.05) == 0.5
    # with a budget that allows the unlucky account, both are caught
    assert hindsight([*honest, strong, weak], 0.05, max_honest_fp=0.05) == 1.0
    # accounts with equal evidence cannot be told apart: a threshold takes both or neither
    assert hindsight([*honest, Account("slow_attacker", True, 10, 3, 0)], 0.05) == 0.0
    assert hindsight(honest, 0.05) is None
