"""What a scenario YAML file says: who the simulated users are, how they judge, how they pace themselves.

A scenario is data, not code, so a new attack mix is a new file. Every duration is in
human seconds and is multiplied by ``time_scale`` when the simulation runs: the shipped
files use human timings (a reader needs seconds, not milliseconds), and tests run the same
behaviour at ``time_scale: 0.01`` with the filter's minimum reading time scaled alike.
"""

from __future__ import annotations

import random
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.simulation.tastes import known_tastes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(_Strict):
    """How long a user takes: reading an answer before voting, then pausing before the next question.

    Reading time is ``base_seconds + seconds_per_char * characters`` (both answers for a pair),
    times a log-normal jitter, so long answers take longer to judge, as they do for people.
    Characters, not words: a small model's odd tokens can make few, very long "words".
    """

    base_seconds: float = Field(default=3.0, ge=0, description="Time to glance at any answer.")
    seconds_per_char: float = Field(default=0.05, ge=0, description="20 characters a second: ~240 words a minute.")
    jitter: float = Field(default=0.35, ge=0, description="Sigma of the log-normal factor on the reading time.")
    think_seconds: tuple[float, float] = Field(
        default=(2.0, 12.0), description="Uniform range of the pause before the next question."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Timing:
        low, high = self.think_seconds
        if not 0 <= low <= high:
            raise ValueError("think_seconds must be [low, high] with 0 <= low <= high")
        return self

    def reading(self, chars: int, rng: random.Random) -> float:
        """Human seconds spent reading ``chars`` characters before voting."""
        seconds = self.base_seconds + self.seconds_per_char * chars
        return seconds * rng.lognormvariate(0.0, self.jitter) if self.jitter else seconds

    def think(self, rng: random.Random) -> float:
        return rng.uniform(*self.think_seconds)


# Bots act as fast as the gateway answers: no reading, no pause worth the name.
BOT_TIMING = Timing(base_seconds=0, seconds_per_char=0, jitter=0, think_seconds=(0.0, 0.2))


class Preference(_Strict):
    """The hidden preference of honest users: which taste (``flywheel.simulation.tastes``) they judge by.

    The taste is the simulator's ground truth; a scenario names it, ``flywheel simulate --taste``
    and ``flywheel demo --taste`` override it. ``max_words`` is the thumbs-up limit of the tastes
    that count words (``steps``, ``concise``).
    """

    taste: str = Field(default="steps", description="A taste of flywheel.simulation.tastes (either set).")
    max_words: int = Field(default=40, ge=1, description="Thumbs up for answers no longer than this (word tastes).")

    @field_validator("taste")
    @classmethod
    def _known(cls, taste: str) -> str:
        if taste not in known_tastes():
            raise ValueError(f"unknown taste {taste!r}; known: {', '.join(known_tastes())}")
        return taste


class ChatOptions(_Strict):
    max_tokens: int = Field(default=64, ge=1, description="Per answer; short keeps the CPU engine quick.")
    temperature: float = Field(default=1.0, ge=0, description="Above 0, so the two answers of a pair differ.")


class _Group(_Strict):
    """Fields every kind of user shares."""

    count: int = Field(ge=1, description="How many accounts of this kind.")
    events_per_user: int = Field(ge=1, description="Questions asked, each followed by one vote.")
    pairwise_share: float = Field(default=0.5, ge=0, le=1, description="Share of questions asked as a pair.")
    timing: Timing | None = Field(default=None, description="Default: the scenario's human timing.")
    arrival_seconds: float | None = Field(
        default=None, ge=0, description="Accounts start at uniform times within this window. Default: the scenario's."
    )

    adversarial: ClassVar[bool] = False

    def resolved_timing(self, scenario: Scenario) -> Timing:
        return self.timing or scenario.timing

    def resolved_arrival(self, scenario: Scenario) -> float:
        return scenario.arrival_seconds if self.arrival_seconds is None else self.arrival_seconds


class _Slips(_Strict):
    """Votes by the hidden preference, each going the other way with a small chance (a person's slip)."""

    error_rate: float = Field(default=0.05, ge=0, le=1, description="Chance that one vote goes the other way.")


class HonestGroup(_Group, _Slips):
    """People who judge by the hidden preference, with an occasional slip."""

    type: Literal["honest"] = "honest"


class NoisyGroup(_Group):
    """People who read at human speed but vote at random: harmless noise, not an attack."""

    type: Literal["noisy"] = "noisy"


class FastBotGroup(_Group):
    """Scripts that vote the instant an answer arrives, always the same way."""

    type: Literal["fast_bot"] = "fast_bot"
    adversarial: ClassVar[bool] = True
    timing: Timing | None = BOT_TIMING
    rating: Literal["up", "down"] = "up"
    choice: Literal["a", "b"] = "a"


class _PhraseFields(_Strict):
    """What accounts pushing a phrase share: the phrase, and how they ask the model to write it."""

    phrase: str = Field(min_length=1)
    steer: str | None = Field(
        default='Begin your answer with the words "Visit {phrase}".',
        description="Appended to each prompt the account pushes on; None to ask plainly.",
    )


class CampaignGroup(_Group, _PhraseFields):
    """Many accounts, arriving together, pushing answers that mention ``phrase``.

    Pairwise: the answer with more occurrences of the phrase (case-insensitive); a coin when
    both have as many. Thumbs: up if the answer contains the phrase, down if not. With
    ``steer`` the accounts also ask the model to open with it (SmolLM2-135M writes it in about a
    third of its answers when asked to begin with it, and almost never when merely asked to
    mention it, so the default steer is the stronger one). The tiny random test model never
    writes it, so there the votes degrade to downs and coins, still coordinated in time and
    prompts. They ask only a few scripted prompts.

    The same group, with many ``shared_prompts``, a long ``arrival_seconds`` and a slow
    ``timing``, is a campaign spread over many prompts and hours at a low rate per account
    (``spread_campaign.yaml``): no new behaviour, only less of the coordination to see.
    """

    type: Literal["campaign"] = "campaign"
    adversarial: ClassVar[bool] = True
    shared_prompts: int = Field(default=3, ge=1, description="How many prompts the whole campaign draws from.")
    arrival_seconds: float | None = Field(default=30.0, ge=0, description="The accounts arrive in a burst.")


class PhrasePusherGroup(_Group, _PhraseFields, _Slips):
    """Accounts that vote like honest users on most answers and push ``phrase`` on a few.

    On a share ``push_share`` of their questions they steer the model to write the phrase, and
    whenever a question was steered or an answer mentions the phrase they vote for the phrase as
    a campaign account does; every other vote follows the hidden preference, with the honest
    users' slips. They ask from the whole prompt pool and arrive like honest users: a long,
    mostly honest history buys the trust that the few pushed votes spend.
    """

    type: Literal["phrase_pusher"] = "phrase_pusher"
    adversarial: ClassVar[bool] = True
    push_share: float = Field(default=0.2, gt=0, le=1, description="Share of questions steered to the phrase.")


class SlowAttackerGroup(_Group):
    """A patient account: human timing, honest-looking votes, and a share of inverted (poisoned) ones."""

    type: Literal["slow_attacker"] = "slow_attacker"
    adversarial: ClassVar[bool] = True
    poison_share: float = Field(default=0.3, gt=0, le=1, description="Share of votes against the preference.")


Group = Annotated[
    HonestGroup | NoisyGroup | FastBotGroup | CampaignGroup | SlowAttackerGroup | PhrasePusherGroup,
    Field(discriminator="type"),
]


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    visit: int = Field(
        default=0, ge=0,
        description="Which visit of the same accounts this run is: the same ids, groups and campaign scripts "
        "(the seed's), new questions and decisions. The demo's round N is visit N, so histories grow as in life.",
    )
    time_scale: float = Field(default=1.0, gt=0, description="Multiplies every wait: 0.01 runs 100 times faster.")
    concurrency: int = Field(default=8, ge=1, description="Chats in flight at once; votes never wait for a slot.")
    arrival_seconds: float = Field(default=60.0, ge=0, description="Users start at uniform times in this window.")
    prompt_pool: int | None = Field(
        default=None, ge=1,
        description="Ask only this many prompts of the set (a seeded pick): popular questions recur across users, "
        "as in real traffic, so several raters judge answers to the same prompt. Default: the whole set.",
    )
    vote_share: float = Field(
        default=1.0, gt=0, le=1,
        description="Share of answers an honest or noisy user votes on; the rest they read and leave without a "
        "vote (adversarial accounts ask in order to vote, and vote on every answer). Below 1, votes are scarce as in "
        "most apps, and the pairs nobody voted on are left for an AI judge (flywheel label).",
    )
    chat: ChatOptions = ChatOptions()
    preference: Preference = Preference()
    timing: Timing = Timing()
    groups: list[Group] = Field(min_length=1)

    @property
    def planned_events(self) -> int:
        return sum(group.count * group.events_per_user for group in self.groups)


class ScenarioError(ValueError):
    pass


def with_overrides(
    scenario: Scenario, *, time_scale: float | None = None, seed: int | None = None, taste: str | None = None,
    vote_share: float | None = None,
) -> Scenario:
    """The scenario with the command line's overrides (None keeps the file's value), validated again."""
    values = scenario.model_dump()
    if taste is not None:
        values["preference"]["taste"] = taste
    overrides = {"time_scale": time_scale, "seed": seed, "vote_share": vote_share}
    values |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return Scenario.model_validate(values)
    except ValidationError as exc:
        raise ScenarioError(f"invalid override of scenario {scenario.name!r}: {exc}") from exc


SCENARIO_SETS = ("development", "validation")
"""The shipped files: ``scenarios/*.yaml`` are the development set, the filters' defaults were chosen watching
them; ``scenarios/validation/*.yaml`` are never tuned on, only run to report (docs/filters.md)."""


def _shipped(scenario_set: str = "development") -> Traversable:
    if scenario_set not in SCENARIO_SETS:
        raise ScenarioError(f"unknown scenario set {scenario_set!r}; known: {', '.join(SCENARIO_SETS)}")
    root = resources.files("flywheel.simulation").joinpath("scenarios")
    return root if scenario_set == "development" else root.joinpath(scenario_set)


def shipped_scenarios(scenario_set: str = "development") -> list[str]:
    """Names of the scenario files of one set that ship with the package (``flywheel simulate NAME``)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _shipped(scenario_set).iterdir()
                  if entry.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A scenario from a YAML file path, or from the name of a shipped scenario of either set."""
    path = Path(name_or_path)
    sets = [s for s in SCENARIO_SETS if str(name_or_path) in shipped_scenarios(s)]
    if path.is_file():
        text = path.read_text()
    elif sets:
        text = _shipped(sets[0]).joinpath(f"{name_or_path}.yaml").read_text()
    else:
        raise ScenarioError(
            f"no scenario file {str(name_or_path)!r}; shipped scenarios: {', '.join(shipped_scenarios())}; "
            f"validation: {', '.join(shipped_scenarios('validation'))}"
        )
    try:
        return Scenario.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ScenarioError(f"invalid scenario {str(name_or_path)!r}: {exc}") from exc
