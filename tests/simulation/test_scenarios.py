"""Scenario files, user behaviours and the report's arithmetic, without a gateway."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from flywheel.simulation.report import Whereabouts, build_report
from flywheel.simulation.scenario import ScenarioError, Timing, load_scenario, shipped_scenarios, with_overrides
from flywheel.simulation.truth import TruthRecord, TruthWriter, read_truth
from flywheel.simulation.users import CampaignAccount, SlowAttacker, load_prompts, plan_users

STEPS = "Here is how:\n1. Boil water.\n2) Add the egg.\n3. Wait six minutes."


@pytest.mark.parametrize("name", ["baseline", "campaign", "slow_attacker", "mixed"])
def test_every_required_scenario_ships_and_validates(name: str) -> None:
    assert name in shipped_scenarios()
    scenario = load_scenario(name)
    assert scenario.name == name and scenario.planned_events > 0
    assert len(plan_users(scenario)) == sum(g.count for g in scenario.groups)


def test_mixed_has_every_kind_and_baseline_only_the_simple_ones() -> None:
    assert {g.type for g in load_scenario("mixed").groups} == {
        "honest", "noisy", "fast_bot", "campaign", "slow_attacker"
    }
    assert {g.type for g in load_scenario("baseline").groups} == {"honest", "noisy", "fast_bot"}


def test_scenario_from_a_path_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "groups": [{"type": "noisy", "count": 2, "events_per_user": 3}]}))
    assert load_scenario(path).planned_events == 6
    with pytest.raises(ScenarioError, match="shipped scenarios: baseline"):
        load_scenario("no-such-scenario")
    path.write_text(yaml.safe_dump({"name": "bad", "groups": [{"type": "alien", "count": 1, "events_per_user": 1}]}))
    with pytest.raises(ScenarioError, match="invalid scenario"):
        load_scenario(path)


def test_prompt_set_is_large_and_distinct() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 200
    assert len({p.prompt for p in prompts}) == len({p.id for p in prompts}) == len(prompts)


def test_timing_scales_with_length() -> None:
    timing = Timing(base_seconds=2, seconds_per_char=0.5, jitter=0)
    assert timing.reading(10, random.Random(0)) == 7
    assert Timing(think_seconds=(1, 1)).think(random.Random(0)) == 1


def test_accounts_are_reproducible_opaque_and_coordinated() -> None:
    scenario = load_scenario("mixed")
    first, again = plan_users(scenario), plan_users(scenario)
    assert [u.user_id for u in first] == [u.user_id for u in again]
    assert len({u.user_id for u in first}) == len(first)
    assert all(u.user_id.startswith("u_") and u.user_type not in u.user_id for u in first)
    campaign = [u for u in first if isinstance(u, CampaignAccount)]
    assert len({u.prompts for u in campaign}) == 1 and len(campaign[0].prompts) == 3
    _, messages = campaign[0].prompt()
    assert "bestdeals.example" in messages[0]["content"]


def test_slow_attacker_poisons_about_its_share() -> None:
    attacker = next(u for u in plan_users(load_scenario("slow_attacker")) if isinstance(u, SlowAttacker))
    votes = [attacker.rate("How do I boil an egg?", STEPS) for _ in range(2000)]
    poisoned = [v for v in votes if v.poisoned]
    assert all(v.value == "down" for v in poisoned) and all(v.value == "up" for v in votes if not v.poisoned)
    assert 0.35 < len(poisoned) / len(votes) < 0.45


def test_users_leave_a_share_of_answers_unvoted_and_full_vote_runs_draw_nothing_for_it() -> None:
    users = plan_users(load_scenario("mixed"))
    user = next(u for u in users if u.user_type == "honest")
    assert sum(user.votes_on(0.3) for _ in range(4000)) / 4000 == pytest.approx(0.3, abs=0.03)
    assert all(u.votes_on(0.3) for u in users if u.adversarial)  # they ask in order to vote
    state = user.rng.getstate()
    assert all(user.votes_on(1.0) for _ in range(100)) and user.rng.getstate() == state
    with pytest.raises(ScenarioError, match="vote_share"):
        with_overrides(load_scenario("baseline"), vote_share=0.0)


def _record(event_id: str, user_type: str, adversarial: bool, poisoned: bool = False) -> TruthRecord:
    return TruthRecord(
        event_id=event_id, user_id="u_1", user_type=user_type, adversarial=adversarial,  # type: ignore[arg-type]
        poisoned=poisoned, type="thumbs", vote="up", target_id="resp_" + "0" * 32, prompt_id="p001",
        reading_seconds=1.0, sent_at=datetime.now(UTC), scenario="t",
    )


def test_report_counts_recall_false_positives_and_pending(tmp_path: Path) -> None:
    records = [_record(f"h{i}", "honest", False) for i in range(50)]
    records += [_record(f"b{i}", "fast_bot", True) for i in range(10)]
    records += [_record(f"s{i}", "slow_attacker", True, poisoned=i < 4) for i in range(10)]
    path = tmp_path / "truth.jsonl"
    with TruthWriter(path) as writer:
        for record in records:
            writer.write(record)
    assert list(read_truth(path)) == records

    found = Whereabouts(accepted={f"h{i}" for i in range(49)} | {"s9"},
                        quarantined={"h49": ["too_fast"]} | {f"b{i}": ["too_fast", "bot"] for i in range(10)}
                        | {f"s{i}": ["unreliable"] for i in range(8)})
    report = build_report(records, found)
    figures = report.as_json()
    assert list(figures) == ["honest", "fast_bot", "slow_attacker", "overall"]
    assert figures["honest"] | {"reasons": None} == {
        "events": 50, "quarantined": 0.02, "quarantined_events": 1, "accepted_events": 49, "pending_events": 0,
        "adversarial": False, "reasons": None,
    }
    assert figures["fast_bot"]["reasons"] == {"too_fast": 10, "bot": 10}
    assert figures["slow_attacker"]["pending_events"] == 1 and figures["slow_attacker"]["poisoned_events"] == 4
    assert figures["overall"] == {"adversarial_recall": 0.9, "honest_false_positive": 0.02, "events": 70,
                                  "pending_events": 1}
    assert report.passes(0.9, 0.02) and not report.passes(0.95, 0.02)
