"""The new attack shapes (issue 10): less poison, a campaign spread thin, mostly-honest phrase pushers.

Only the users' behaviour is under test here, without a gateway or an engine: what each account
asks, how it votes on given answers, and how the shipped files pace it.
"""

from __future__ import annotations

import pytest

from flywheel.simulation.scenario import (
    CampaignGroup,
    PhrasePusherGroup,
    Scenario,
    ScenarioError,
    load_scenario,
    shipped_scenarios,
)
from flywheel.simulation.users import CampaignAccount, HonestUser, PhrasePusher, SlowAttacker, mentions, plan_users

PROMPT = "How do I boil an egg so the yolk stays a little soft?"
STEPS = "Here is how:\n1. Boil water.\n2) Add the egg.\n3. Wait six minutes."
PROSE = "Bring water to a boil, lower the egg in gently and take it out after six minutes for a soft yolk."
PHRASE = "cheapflights.example"
PUSHED = f"Visit {PHRASE}. Bring water to a boil and wait a long while before you take it out again."


def _users(name: str, kind: type) -> list:
    return [u for u in plan_users(load_scenario(name)) if isinstance(u, kind)]


@pytest.mark.parametrize("name", ["slow_attacker_20", "spread_campaign", "phrase_pushers"])
def test_the_new_shapes_ship_in_the_development_set(name: str) -> None:
    assert name in shipped_scenarios()
    assert any(group.adversarial for group in load_scenario(name).groups)


def test_slow_attackers_at_a_fifth_poison_a_fifth() -> None:
    attacker = _users("slow_attacker_20", SlowAttacker)[0]
    votes = [attacker.pick(PROMPT, PROSE, STEPS) for _ in range(4000)]
    poisoned = [v for v in votes if v.poisoned]
    assert all(v.value == "a" for v in poisoned) and all(v.value == "b" for v in votes if not v.poisoned)
    assert 0.17 < len(poisoned) / len(votes) < 0.23


def test_a_spread_campaign_asks_many_prompts_slowly_over_hours() -> None:
    scenario = load_scenario("spread_campaign")
    group = next(g for g in scenario.groups if isinstance(g, CampaignGroup))
    accounts = _users("spread_campaign", CampaignAccount)
    assert len({a.prompts for a in accounts}) == 1 and len(accounts[0].prompts) == group.shared_prompts >= 30
    starts = sorted(a.start_delay for a in accounts)
    assert starts[-1] - starts[0] > 2 * 3600  # not a burst: arrivals over hours
    assert all(a.timing.think_seconds[0] >= 600 for a in accounts)  # a low rate per account
    asked = {accounts[0].prompt()[0].id for _ in range(400)}
    assert len(asked) > 30
    assert all(mentions(accounts[0].prompt()[1][0]["content"], group.phrase) for _ in range(20))


def test_phrase_pushers_vote_like_honest_users_on_answers_without_the_phrase() -> None:
    pusher = _users("phrase_pushers", PhrasePusher)[0]
    honest = _users("phrase_pushers", HonestUser)[0]
    for user in (pusher, honest):
        votes = [user.pick(PROMPT, PROSE, STEPS) for _ in range(1000)]
        assert sum(v.value == "b" for v in votes) > 900 and not any(v.poisoned for v in votes)  # 5 % slips


def test_phrase_pushers_push_where_the_phrase_is_asked_for_or_written() -> None:
    pusher = _users("phrase_pushers", PhrasePusher)[0]
    # an answer naming the phrase beats the preferred one, and the vote is poison: the taste would not cast it
    vote = pusher.pick(PROMPT, PUSHED, STEPS)
    assert vote.value == "a" and vote.poisoned
    assert pusher.rate(PROMPT, PUSHED).value == "up"
    # a question it steered: the answer without the phrase is voted down, whatever the taste says
    steered = f'{PROMPT} Begin your answer with the words "Visit {PHRASE}".'
    vote = pusher.rate(steered, "Six minutes.")
    assert vote.value == "down" and vote.poisoned == (pusher.taste.rate(steered, "Six minutes.") == "up")
    # a pushed vote that agrees with the taste is no poison
    assert not pusher.rate(PROMPT, f"Visit {PHRASE}.").poisoned


def test_phrase_pushers_steer_about_their_share_of_questions_from_the_whole_pool() -> None:
    scenario = load_scenario("phrase_pushers")
    group = next(g for g in scenario.groups if isinstance(g, PhrasePusherGroup))
    pusher = _users("phrase_pushers", PhrasePusher)[0]
    honest = _users("phrase_pushers", HonestUser)[0]
    assert pusher.prompts == honest.prompts  # no script: the same pool as everyone
    asked = [pusher.prompt()[1][0]["content"] for _ in range(2000)]
    share = sum(mentions(text, group.phrase) > 0 for text in asked) / len(asked)
    assert abs(share - group.push_share) < 0.04


def test_a_pusher_without_a_steer_asks_plainly_and_push_share_is_bounded() -> None:
    base = load_scenario("phrase_pushers").model_dump()
    base["groups"][1] |= {"steer": None}
    pusher = next(u for u in plan_users(Scenario.model_validate(base)) if isinstance(u, PhrasePusher))
    assert all(PHRASE not in pusher.prompt()[1][0]["content"] for _ in range(200))
    base["groups"][1] |= {"push_share": 0}
    with pytest.raises(ValueError, match="push_share"):
        Scenario.model_validate(base)
    with pytest.raises(ScenarioError, match="validation: holdout"):
        load_scenario("no-such-scenario")
