"""How each kind of simulated user asks and votes.

Every judgment is computed from the answer text alone, so it works with any model, the
tiny random one of the tests included. Account ids are opaque (``u_<hex>``) and do not
reveal the user's kind: the filters must find attackers by behaviour, not by name.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from flywheel.simulation.scenario import (
    CampaignGroup,
    FastBotGroup,
    Group,
    HonestGroup,
    NoisyGroup,
    PhrasePusherGroup,
    Scenario,
    SlowAttackerGroup,
    Timing,
)
from flywheel.simulation.tastes import Taste, make_taste
from flywheel.simulation.truth import UserType


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str


@cache
def load_prompts(name: str = "prompts.jsonl") -> tuple[Prompt, ...]:
    """A prompt set shipped beside this module: everyday questions, written for the simulator.

    ``prompts.jsonl`` is what simulated users ask; ``eval_prompts.jsonl`` is the held-out set the
    demo's evaluation asks every version, on topics no user asks about, so no round trains on it.
    """
    text = resources.files("flywheel.simulation").joinpath(name).read_text(encoding="utf-8")
    return tuple(Prompt(**json.loads(line)) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Served:
    """What a user got back for one question: one answer, or the two answers (A, B) of a pair."""

    texts: tuple[str, ...]
    response_ids: tuple[str, ...]
    pair_id: str | None = None

    @property
    def chars(self) -> int:
        return sum(len(text) for text in self.texts)


@dataclass(frozen=True)
class Vote:
    value: str  # "up" | "down" for thumbs, "a" | "b" | "tie" for a pair
    poisoned: bool = False


def mentions(text: str, phrase: str) -> int:
    return text.lower().count(phrase.lower())


def slipped(vote: str, rng: random.Random) -> str:
    """The vote the other way: up/down and a/b swap; a tie, which has no opposite, becomes a side at random.

    Why a tie takes a side: a person who slips where they see no difference presses one of the two
    answers (and an attacker inverting a tie has only a side to give). A slip that left a tie a tie
    made every side taken on a tie an attacker's in the simulation: a filter reading sides on ties
    would have been credited for the simulator, not for the evidence (docs/filters.md, section 11).
    """
    if vote == "tie":
        return rng.choice(("a", "b"))
    return {"up": "down", "down": "up", "a": "b", "b": "a"}[vote]


class SimUser(ABC):
    """One simulated account: its id, its pace, which prompts it asks and how it votes."""

    user_type: UserType

    def __init__(
        self,
        user_id: str,
        group: Group,
        scenario: Scenario,
        rng: random.Random,
        start_delay: float,
        prompts: tuple[Prompt, ...],
    ) -> None:
        self.user_id = user_id
        self.prompts = prompts
        self.group = group
        self.rng = rng
        self.start_delay = start_delay
        self.timing: Timing = group.resolved_timing(scenario)
        self.taste: Taste = make_taste(scenario.preference.taste, scenario.preference.max_words)

    @property
    def adversarial(self) -> bool:
        return self.group.adversarial

    def wants_pair(self) -> bool:
        return self.rng.random() < self.group.pairwise_share

    def votes_on(self, vote_share: float) -> bool:
        """Whether this answer gets a vote. Ordinary users leave a share of answers unvoted; an account that asks
        in order to vote (a bot, a campaign, an attacker) votes on every one. At a share of 1 no random draw, so
        full-vote runs stay as they were."""
        return vote_share >= 1 or self.adversarial or self.rng.random() < vote_share

    def prompt(self) -> tuple[Prompt, list[dict[str, Any]]]:
        """The next question: a prompt from the scenario's pool, as chat messages."""
        prompt = self.rng.choice(self.prompts)
        return prompt, [{"role": "user", "content": prompt.prompt}]

    def vote(self, prompt: str, served: Served) -> Vote:
        """The vote on what came back for ``prompt`` (the question as asked)."""
        if served.pair_id is not None:
            return self.pick(prompt, *served.texts)
        return self.rate(prompt, served.texts[0])

    def verdict(self, prompt: str, served: Served) -> str:
        """What the hidden preference says of ``served``: the vote of an honest user who never slips. The truth file
        keeps it for an oracle's view of the run (``tests/bench/recall_bound.py``); no filter ever sees it."""
        if served.pair_id is not None:
            return self.taste.pick(prompt, *served.texts)
        return self.taste.rate(prompt, served.texts[0])

    @abstractmethod
    def rate(self, prompt: str, text: str) -> Vote: ...

    @abstractmethod
    def pick(self, prompt: str, a: str, b: str) -> Vote: ...


class _Slipping(SimUser):
    """Votes by the hidden preference, with a person's occasional slip (``error_rate``)."""

    group: HonestGroup | PhrasePusherGroup

    def _slip(self, vote: str) -> Vote:
        return Vote(slipped(vote, self.rng) if self.rng.random() < self.group.error_rate else vote)

    def rate(self, prompt: str, text: str) -> Vote:
        return self._slip(self.taste.rate(prompt, text))

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        return self._slip(self.taste.pick(prompt, a, b))


class HonestUser(_Slipping):
    user_type = "honest"
    group: HonestGroup


class NoisyUser(SimUser):
    user_type = "noisy"

    def rate(self, prompt: str, text: str) -> Vote:
        return Vote(self.rng.choice(("up", "down")))

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        return Vote(self.rng.choice(("a", "b")))


class FastBot(SimUser):
    user_type = "fast_bot"
    group: FastBotGroup

    def rate(self, prompt: str, text: str) -> Vote:
        return Vote(self.group.rating)

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        return Vote(self.group.choice)


def steered(prompt: Prompt, group: CampaignGroup | PhrasePusherGroup) -> list[dict[str, Any]]:
    """``prompt`` as chat messages, with the group's request to write its phrase appended (if it has one)."""
    steer = group.steer
    content = f"{prompt.prompt} {steer.format(phrase=group.phrase)}" if steer else prompt.prompt
    return [{"role": "user", "content": content}]


def phrase_rating(text: str, phrase: str) -> str:
    """A pusher's thumb: up if the answer mentions the phrase, else down."""
    return "up" if mentions(text, phrase) else "down"


def phrase_choice(a: str, b: str, phrase: str, rng: random.Random) -> str:
    """A pusher's pick: the answer mentioning the phrase more often; a coin when both do as much."""
    count_a, count_b = mentions(a, phrase), mentions(b, phrase)
    if count_a == count_b:
        return rng.choice(("a", "b"))
    return "a" if count_a > count_b else "b"


class CampaignAccount(SimUser):
    """Pushes ``phrase``; every account of a campaign asks from the same few scripted prompts."""

    user_type = "campaign"
    group: CampaignGroup

    def prompt(self) -> tuple[Prompt, list[dict[str, Any]]]:
        prompt = self.rng.choice(self.prompts)
        return prompt, steered(prompt, self.group)

    def rate(self, prompt: str, text: str) -> Vote:
        return Vote(phrase_rating(text, self.group.phrase))

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        return Vote(phrase_choice(a, b, self.group.phrase, self.rng))


class PhrasePusher(_Slipping):
    """Honest-looking on most questions; on a few (``push_share``) steers the model to the phrase and votes for it.

    Whether a vote pushes is read from what the account saw, so asking and voting need no shared
    state: a question it steered (the phrase is in the question as asked) or an answer that mentions
    the phrase gets the campaign's vote; anything else the hidden preference's, with slips. A pushed
    vote the preference would not have cast is the poison.
    """

    user_type = "phrase_pusher"
    group: PhrasePusherGroup

    def prompt(self) -> tuple[Prompt, list[dict[str, Any]]]:
        prompt = self.rng.choice(self.prompts)
        if self.rng.random() < self.group.push_share:
            return prompt, steered(prompt, self.group)
        return prompt, [{"role": "user", "content": prompt.prompt}]

    def _pushes(self, prompt: str, *texts: str) -> bool:
        return any(mentions(text, self.group.phrase) for text in (prompt, *texts))

    def rate(self, prompt: str, text: str) -> Vote:
        if not self._pushes(prompt, text):
            return super().rate(prompt, text)
        vote = phrase_rating(text, self.group.phrase)
        return Vote(vote, poisoned=vote != self.taste.rate(prompt, text))

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        if not self._pushes(prompt, a, b):
            return super().pick(prompt, a, b)
        vote = phrase_choice(a, b, self.group.phrase, self.rng)
        return Vote(vote, poisoned=vote != self.taste.pick(prompt, a, b))


class SlowAttacker(SimUser):
    """Votes like an honest user, except a share of votes inverted: those are the poison."""

    user_type = "slow_attacker"
    group: SlowAttackerGroup

    def _maybe_poison(self, honest: str) -> Vote:
        if self.rng.random() >= self.group.poison_share:
            return Vote(honest)
        return Vote(slipped(honest, self.rng), poisoned=True)

    def rate(self, prompt: str, text: str) -> Vote:
        return self._maybe_poison(self.taste.rate(prompt, text))

    def pick(self, prompt: str, a: str, b: str) -> Vote:
        return self._maybe_poison(self.taste.pick(prompt, a, b))


_KINDS: dict[type[Group], type[SimUser]] = {
    HonestGroup: HonestUser,
    NoisyGroup: NoisyUser,
    FastBotGroup: FastBot,
    CampaignGroup: CampaignAccount,
    SlowAttackerGroup: SlowAttacker,
    PhrasePusherGroup: PhrasePusher,
}


def plan_users(scenario: Scenario) -> list[SimUser]:
    """Every account of the scenario, with its own seeded random stream, start time and prompts.

    One master stream (the scenario's seed) deals the prompt pool, ids, seeds and start times,
    so the same scenario file yields the same accounts and the same decisions for the same
    answers; another ``visit`` keeps the accounts and draws new decisions. A campaign's accounts
    share one small script drawn from the pool.
    """
    master = random.Random(scenario.seed)
    everything = load_prompts()
    pool = tuple(master.sample(everything, min(scenario.prompt_pool or len(everything), len(everything))))
    users: list[SimUser] = []
    for group in scenario.groups:
        arrival = group.resolved_arrival(scenario)
        kind = _KINDS[type(group)]
        prompts = tuple(master.sample(pool, min(group.shared_prompts, len(pool)))) if isinstance(
            group, CampaignGroup) else pool
        for _ in range(group.count):
            user_id = f"u_{master.getrandbits(48):012x}"
            rng = random.Random(master.getrandbits(64) + scenario.visit * 2**64)
            users.append(kind(user_id, group, scenario, rng, master.uniform(0, arrival), prompts))
    return users


def campaign_prompts(scenario: Scenario) -> tuple[Prompt, ...]:
    """The scripted prompts the scenario's campaigns steer to their phrase, in the order first dealt.

    A campaign's votes pair its phrase with these questions (asked with the steer), so this is
    where a poisoned model would show it first: the evaluation asks them plainly, as an honest
    user would, and counts the phrase in the answers.
    """
    found: dict[str, Prompt] = {}
    for user in plan_users(scenario):
        if isinstance(user, CampaignAccount):
            found.update((p.id, p) for p in user.prompts if p.id not in found)
    return tuple(found.values())
