"""An honest slip on a tie takes a side, as an attacker's inverted tie does: sides taken on ties are no
attacker's signature in the simulation (docs/filters.md, section 11). And the truth file's verdict is the
taste's own, before slips and poison."""

from __future__ import annotations

import random

from flywheel.simulation.scenario import load_scenario
from flywheel.simulation.users import HonestUser, Served, SlowAttacker, plan_users, slipped

PROMPT = "How do I boil an egg so the yolk stays a little soft?"
PROSE = "Bring water to a boil, lower the egg in gently and take it out after six minutes for a soft yolk."
STEPS = "Here is how:\n1. Boil water.\n2) Add the egg.\n3. Wait six minutes."


def _first(kind: type) -> HonestUser | SlowAttacker:
    return next(u for u in plan_users(load_scenario("slow_attacker")) if isinstance(u, kind))


def test_a_slip_swaps_a_side_and_gives_a_tie_a_side() -> None:
    rng = random.Random(0)
    assert [slipped(v, rng) for v in ("up", "down", "a", "b")] == ["down", "up", "b", "a"]
    assert {slipped("tie", rng) for _ in range(50)} == {"a", "b"}


def test_honest_users_take_a_side_on_a_tie_at_their_slip_rate() -> None:
    honest = _first(HonestUser)
    votes = [honest.pick(PROMPT, PROSE, PROSE).value for _ in range(4000)]  # one text twice: a tie by any taste
    sides = sum(v != "tie" for v in votes) / len(votes)
    assert abs(sides - honest.group.error_rate) < 0.015
    assert {"a", "b"} <= set(votes)


def test_an_attackers_poisoned_tie_takes_a_side_and_is_poison() -> None:
    attacker = _first(SlowAttacker)
    votes = [attacker.pick(PROMPT, PROSE, PROSE) for _ in range(2000)]
    assert all(v.value in ("a", "b") for v in votes if v.poisoned)
    assert all(v.value == "tie" for v in votes if not v.poisoned)


def test_the_verdict_is_the_tastes_whoever_votes() -> None:
    for kind in (HonestUser, SlowAttacker):
        user = _first(kind)
        pair = Served((PROSE, STEPS), ("r1", "r2"), "p1")
        thumb = Served((STEPS,), ("r3",))
        assert user.verdict(PROMPT, pair) == user.taste.pick(PROMPT, PROSE, STEPS)
        assert user.verdict(PROMPT, thumb) == user.taste.rate(PROMPT, STEPS)
        assert user.verdict(PROMPT, Served((PROSE, PROSE), ("r1", "r2"), "p1")) == "tie"
