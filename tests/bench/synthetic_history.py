"""A fixed, seeded vote history held in memory: the input of the consensus search benchmark and its tests.

The consensus search's cost grows with the votes and the distinct terms of the answers, so the
history has the shape of real traffic: honest raters each voting on their own answers to the
shipped prompts (5 % slips), slow attackers inverting a share of their votes, coin flippers,
half the votes pairs. Answers vary in every way a taste could look at (numbered steps, bullets
or prose; length; numbers; the prompt's own words or other prompts'), and the raters judge by
one of the simulator's tastes: this is a benchmark input, never something a filter sees.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from feedback.filters.base import Answer, FilterState, Rater, Vote
from flywheel.simulation.tastes import make_taste
from flywheel.simulation.users import load_prompts, slipped

APP = 1
NUMBERS = ("2", "3", "10", "2.5", "15", "40", "half", "ten", "1,000")


@dataclass(frozen=True)
class Population:
    """Who votes, and how much: the defaults are the 6 300-vote history the 172 s first search was measured on."""

    honest: int = 150
    honest_votes: int = 40
    attackers: int = 8
    attacker_votes: int = 40
    poison_share: float = 0.4
    flippers: int = 10
    flipper_votes: int = 20
    taste: str = "numbers"
    seed: int = 0
    list_share: float = 0.5  # answers laid out as lists (3 in 5 numbered, the rest bulleted); the others are prose


@dataclass
class History:
    state: FilterState
    kinds: dict[Rater, str] = field(default_factory=dict)

    @property
    def votes(self) -> int:
        return sum(len(v) for v in self.state.votes.values())


def _answer_text(rng: random.Random, prompt: str, vocabulary: list[str], list_share: float) -> str:
    """One answer: a layout (steps, bullets, prose), a length, some of the prompt's words or none, numbers or none.

    ``list_share`` sets how often the answer is a list: a base model that writes mostly prose (a small share) makes
    most pairs ties under a taste about layout, which leaves few informative votes per rater."""
    own = [w.strip("?,.").lower() for w in prompt.split() if len(w) > 3]
    words = lambda n: [rng.choice(own) if own and rng.random() < 0.3 else rng.choice(vocabulary)  # noqa: E731
                       for _ in range(n)]
    sentences = []
    for _ in range(rng.randint(1, 6)):
        sentence = words(rng.randint(5, 14))
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), rng.choice(NUMBERS))
        sentences.append(" ".join(sentence).capitalize() + ".")
    layout = rng.random()
    if layout < 0.6 * list_share:
        return "\n".join(f"{n}. {s}" for n, s in enumerate(sentences, 1))
    if layout < list_share:
        return "\n".join(f"- {s}" for s in sentences)
    return " ".join(sentences)


def build_history(population: Population | None = None) -> History:
    """The state a worker would hold after these votes, every vote accepted (the search decides who goes)."""
    p = population or Population()
    rng = random.Random(p.seed)
    prompts = [q.prompt for q in load_prompts()]
    vocabulary = sorted({w.strip("?,.").lower() for q in prompts for w in q.split() if w.isalpha()})
    taste = make_taste(p.taste, 30)
    state, kinds = FilterState(), {}
    start = datetime(2026, 12, 1, tzinfo=UTC)
    raters = ([("honest", 0.05, p.honest_votes)] * p.honest + [("attacker", p.poison_share, p.attacker_votes)]
              * p.attackers + [("flipper", 0.5, p.flipper_votes)] * p.flippers)
    counter = 0
    for n, (kind, against, count) in enumerate(raters):
        rater: Rater = (APP, f"u{n:04d}")
        kinds[rater] = kind
        for _ in range(count):
            counter += 1
            at = start + timedelta(seconds=counter)
            prompt = rng.choice(prompts)
            texts = [_answer_text(rng, prompt, vocabulary, p.list_share) for _ in range(1 if rng.random() < 0.5 else 2)]
            pair = f"pair{counter}" if len(texts) == 2 else None
            for side, text in enumerate(texts):
                state.add_answer(Answer(f"r{counter}{'ab'[side]}", pair, APP, f"h{counter}", text, at, prompt))
            if pair is None:
                label, target = taste.rate(prompt, texts[0]), f"r{counter}a"
            else:
                label, target = taste.pick(prompt, *texts), pair
            if rng.random() < against:
                label = slipped(label, rng)
            kind_of_vote = "thumbs" if pair is None else "pairwise"
            state.record(Vote(f"e{counter}", rater, kind_of_vote, target, label, None, at + timedelta(seconds=20)),
                         accepted=True)
    return History(state, kinds)


def interleaved(state: FilterState, seed: int = 0) -> FilterState:
    """The history with its votes in a random order in time (the synthetic history casts each rater's votes in turn)."""
    votes = [vote for rater_votes in state.votes.values() for vote in rater_votes]
    seconds = random.Random(seed).sample(range(len(votes)), len(votes))
    when = {vote.event_id: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for vote, s in
            zip(votes, seconds, strict=True)}
    return dataclasses.replace(state, votes={
        rater: sorted((dataclasses.replace(v, created_at=when[v.event_id]) for v in rater_votes), key=lambda v: v.at)
        for rater, rater_votes in state.votes.items()})
