"""The simulator's tastes: each judges what it says it judges, and a scenario can name any of them."""

from __future__ import annotations

import pytest

from flywheel.simulation.scenario import Preference, load_scenario
from flywheel.simulation.tastes import TASTES, make_taste, markup_lines, numbered_steps, quantities, topic_words
from flywheel.simulation.users import HonestUser, plan_users

PROMPT = "How long should I boil an egg for a soft yolk?"
STEPS = "Here is how:\n1. Boil water.\n2) Add the egg.\n3. Wait six minutes."
PROSE = "Bring water to a boil, lower the egg in gently and take it out after six minutes for a soft yolk."
VAGUE = "Cooking is a matter of taste, so do whatever feels right to you in your own kitchen."
LONG = "word " * 60


def test_five_tastes_two_of_them_about_content() -> None:
    assert set(TASTES) == {"steps", "concise", "prose", "numbers", "on_topic"}
    assert sum(t.about == "content" for t in TASTES.values()) == 2
    with pytest.raises(ValueError, match="known: steps"):
        make_taste("sweet", 30)


def test_features() -> None:
    assert numbered_steps(STEPS) == 3 and numbered_steps("In 2024. we went") == 0
    assert markup_lines(STEPS) == 3 and markup_lines("# Title\n- a\n* b\nplain") == 3 and markup_lines(PROSE) == 0
    assert quantities("Use 2 eggs, 1.5 cups and two spoons; 2 more") == 3 and quantities(VAGUE) == 0
    assert {"boil", "egg", "soft", "yolk", "long"} <= topic_words(PROMPT) and "should" not in topic_words(PROMPT)


def test_steps_prefers_steps_then_brevity() -> None:
    taste = make_taste("steps", 5)
    assert taste.pick(PROMPT, LONG, STEPS) == "b"  # steps beat a shorter answer without them
    assert taste.pick(PROMPT, "short one", "a much longer answer here") == "a"
    assert taste.pick(PROMPT, "same words", "other words") == "tie"
    assert taste.rate(PROMPT, STEPS) == "up" and taste.rate(PROMPT, "tiny") == "up"
    assert taste.rate(PROMPT, LONG) == "down"


def test_each_taste_ranks_by_its_own_criterion() -> None:
    concise, prose = make_taste("concise", 20), make_taste("prose", 20)
    numbers, on_topic = make_taste("numbers", 20), make_taste("on_topic", 20)
    assert concise.pick(PROMPT, LONG, VAGUE) == "b" and concise.rate(PROMPT, LONG) == "down"
    assert prose.pick(PROMPT, STEPS, PROSE) == "b" and prose.rate(PROMPT, STEPS) == "down"
    assert prose.rate(PROMPT, PROSE) == "up"
    # content: a concrete number wins whatever the format; so does an answer about the question asked
    assert numbers.pick(PROMPT, VAGUE, PROSE) == "b" and numbers.rate(PROMPT, VAGUE) == "down"
    assert numbers.pick(PROMPT, PROSE, "Six minutes.") == "tie"
    assert on_topic.pick(PROMPT, VAGUE, PROSE) == "b" and on_topic.rate(PROMPT, PROSE) == "up"
    assert on_topic.rate(PROMPT, VAGUE) == "down"


def test_tastes_disagree_so_a_model_cannot_please_them_all_by_one_trick() -> None:
    verdicts = {name: make_taste(name, 20).pick(PROMPT, STEPS, PROSE) for name in TASTES}
    assert {"a", "b"} <= set(verdicts.values())


def test_a_scenario_names_its_taste_and_honest_users_judge_by_it() -> None:
    scenario = load_scenario("baseline")
    scenario = scenario.model_copy(update={"preference": Preference(taste="prose", max_words=30)})
    honest = next(u for u in plan_users(scenario) if isinstance(u, HonestUser))
    votes = [honest.pick(PROMPT, STEPS, PROSE).value for _ in range(200)]
    assert votes.count("b") > 170  # 5 % slips
    with pytest.raises(ValueError, match="unknown taste"):
        Preference(taste="sweet")
