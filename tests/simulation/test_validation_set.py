"""The validation set: tastes and scenarios kept apart from the development set, run only to report.

The tastes must judge what they say, differ in kind from the five the filters were developed
under, and stay where the filters cannot see them (the import test of
``test_filters_consensus_content.py`` covers the modules; here their names and the shipped
phrases are checked against the filters' and trainer's sources).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flywheel.simulation.scenario import Preference, load_scenario, shipped_scenarios
from flywheel.simulation.tastes import (
    TASTES,
    VALIDATION_TASTES,
    courtesies,
    examples,
    follow_up_questions,
    hedges,
    make_taste,
)
from flywheel.simulation.users import plan_users

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "How do I boil an egg so the yolk stays a little soft?"
PLAIN = "Boil the egg for six minutes, then cool it in cold water."
POLITE = "Hi! Boil the egg for six minutes, then cool it in cold water. Hope this helps."
HEDGED = "It depends, but you might boil it for maybe six minutes; it usually works."
ASKS = "Boil it for six minutes. Do you like the white firm too?"
NAMED = "Boil it for six minutes, as Julia Child did; soft eggs such as ramen eggs take seven."


def test_validation_tastes_are_apart_and_of_other_kinds() -> None:
    assert len(VALIDATION_TASTES) >= 2 and not VALIDATION_TASTES.keys() & TASTES.keys()
    assert {t.about for t in VALIDATION_TASTES.values()} - {t.about for t in TASTES.values()}  # new kinds
    for name in VALIDATION_TASTES:
        assert make_taste(name, 30).name == name
        Preference(taste=name)


def test_counters() -> None:
    assert courtesies(POLITE) == 2 and courtesies(PLAIN) == 0
    assert hedges(HEDGED) == 4 and hedges(PLAIN) == 0
    assert follow_up_questions(ASKS) == 1 and follow_up_questions(PLAIN) == 0
    assert examples(NAMED) == 3 and examples(PLAIN) == 0  # "such as", Julia, Child
    assert examples("Paris is lovely.\n1. Go there. Then eat.") == 0  # sentence and line openers are no names


@pytest.mark.parametrize(("name", "liked"), [("polite", POLITE), ("assertive", PLAIN), ("follow_up", ASKS),
                                             ("named_example", NAMED)])
def test_each_validation_taste_prefers_its_own_criterion(name: str, liked: str) -> None:
    taste = make_taste(name, 30)
    disliked = HEDGED if name == "assertive" else PLAIN
    assert taste.rate(PROMPT, liked) == "up" and taste.rate(PROMPT, disliked) == "down"
    assert taste.pick(PROMPT, disliked, liked) == "b" and taste.pick(PROMPT, liked, disliked) == "a"
    assert taste.pick(PROMPT, liked, liked) == "tie"


def test_validation_scenarios_ship_apart_and_judge_by_validation_tastes() -> None:
    names = shipped_scenarios("validation")
    assert len(names) >= 2 and not set(names) & set(shipped_scenarios())
    kinds = set()
    for name in names:
        scenario = load_scenario(name)
        assert scenario.preference.taste in VALIDATION_TASTES
        assert len(plan_users(scenario)) == sum(g.count for g in scenario.groups)
        kinds |= {g.type for g in scenario.groups}
    assert {"slow_attacker", "campaign", "phrase_pusher"} <= kinds
    for name in shipped_scenarios():
        assert load_scenario(name).preference.taste in TASTES


def test_no_filter_or_trainer_source_names_a_validation_taste_or_a_shipped_phrase() -> None:
    """What the filters may not be tuned to must not appear in them: the tastes' names and the attackers' phrases."""
    phrases = {g.phrase for s in ("development", "validation") for n in shipped_scenarios(s)
               for g in load_scenario(n).groups if hasattr(g, "phrase")}
    names = {*VALIDATION_TASTES, "VALIDATION_TASTES", *phrases}
    sources = [*(ROOT / "feedback" / "filters").glob("*.py"), *(ROOT / "trainer").rglob("*.py"),
               ROOT / "feedback" / "worker.py"]
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])" for n in sorted(names)))
    offenders = {str(p.relative_to(ROOT)): sorted(set(pattern.findall(p.read_text()))) for p in sources}
    assert not {path: found for path, found in offenders.items() if found}
