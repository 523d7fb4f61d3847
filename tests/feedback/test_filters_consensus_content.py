"""The consensus filter learns tastes about content, which no layout or length feature can see.

Every answer here is one prose sentence of the same word count; the raters' taste is about
what it says: whether it gives a quantity, or whether it speaks to the prompt's topic. An
answer and its alternative differ by the words alone, never by length, lines or lists, so a
model of surface features (the filter's former one) has nothing to learn from. The tastes
are built here: the filters never see the simulator's.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import RewardScore
from feedback.db.session import transaction
from feedback.events import ChatMessage, CompletionEvent, Event
from feedback.filters import Pipeline
from feedback.filters.base import FilterState
from feedback.filters.pipeline import vote_of
from feedback.filters.reward_scores import StoredRewardScores
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, filter_settings, store, verdicts

ROOT = Path(__file__).resolve().parents[2]
FILLER = ("people often find that it helps to keep things simple and steady while they try what works for "  # noqa: SIM905
          "them at home or at work and see how it goes over the next while").split()
TOPICS = {
    "How do I grow tomatoes on a balcony?": ["tomatoes", "balcony", "grow", "pots", "plants"],
    "How can I sleep better at night?": ["sleep", "night", "bedroom", "rest", "tired"],
    "How do I learn to play chess?": ["chess", "pieces", "board", "openings", "play"],
    "How should I start saving money?": ["saving", "money", "budget", "account", "spend"],
}
NUMBERS = ("3", "10", "2.5", "15", "40")
WORDS = 14
SETTINGS = filter_settings(bot_min_votes=1000, campaign_min_accounts=1000, velocity_user_max=1000)


def sentence(rng: random.Random, prompt: str, quantity: bool, on_topic: bool) -> str:
    """One sentence of WORDS words: topic words of ``prompt`` or of another prompt, a number or a filler word."""
    topic = TOPICS[prompt] if on_topic else TOPICS[rng.choice([p for p in TOPICS if p != prompt])]
    words = rng.sample(FILLER, WORDS - 3) + rng.sample(topic, 2) + [rng.choice(NUMBERS if quantity else FILLER)]
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


Feature = Callable[[bool, bool], bool]  # (has a quantity, on topic) -> liked


def traffic(build: EventBuilder, app_id: int, likes: Feature,
            seed: int) -> tuple[list[list[Event]], dict[str, list[str]]]:
    """Honest raters (5 % slips) and one slow attacker (40 % of votes inverted), each on their own answers."""
    rng = random.Random(seed)
    kinds = {f"honest{n}": 0.05 for n in range(16)} | {"attacker": 0.4}
    votes_of = {user: 12 for user in kinds} | {"attacker": 30}
    events: dict[str, list[str]] = {user: [] for user in kinds}
    batches: list[list[Event]] = []
    for round_ in range(3):
        batch: list[Event] = []
        for user, against in kinds.items():
            for _ in range(votes_of[user] // 3 + (round_ < votes_of[user] % 3)):
                prompt = rng.choice(list(TOPICS))
                messages = [ChatMessage(role="user", content=prompt)]
                flip = rng.random() < against
                if rng.random() < 0.5:
                    has = rng.random() < 0.5, rng.random() < 0.5
                    answer = build.completion(app_id, messages=messages, answer=sentence(rng, prompt, *has))
                    vote: Event = build.thumbs(app_id, answer.response_id, user_id=user,
                                               rating="up" if likes(*has) != flip else "down", **after(answer, 30))
                    batch += [answer, vote]
                else:
                    a_has = rng.random() < 0.5, rng.random() < 0.5
                    b_has = (not a_has[0], a_has[1]) if rng.random() < 0.5 else (a_has[0], not a_has[1])
                    a, b = build.pair(app_id)
                    a = a.model_copy(update={"messages": messages, "answer": sentence(rng, prompt, *a_has)})
                    b = b.model_copy(update={"messages": messages, "answer": sentence(rng, prompt, *b_has)})
                    liked_a, liked_b = likes(*a_has), likes(*b_has)
                    choice = "tie" if liked_a == liked_b else "a" if liked_a != flip else "b"
                    vote = build.pairwise(app_id, a.pair_id or "", user_id=user, choice=choice, **after(a, 30))
                    batch += [a, b, vote]
                events[user].append(vote.event_id)
        batches.append(batch)
    return batches, events


@pytest.mark.parametrize("likes", [
    pytest.param(lambda quantity, on_topic: quantity, id="gives-a-quantity"),
    pytest.param(lambda quantity, on_topic: on_topic, id="speaks-to-the-prompt"),
])
def test_a_taste_about_content_is_learnt_and_its_attacker_flagged(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder, likes: Feature) -> None:
    pipeline = Pipeline(SETTINGS)
    batches, events = traffic(build, app_id, likes, seed=11)
    for batch in batches:
        store(sessions, pipeline, batch)
    got = verdicts(sessions)
    assert all(got[e] == ["against_consensus"] for e in events["attacker"])
    assert not any(got[e] for user, ids in events.items() if user != "attacker" for e in ids)


def test_without_a_taste_nobody_is_condemned(sessions: sessionmaker[Session], app_id: int,
                                             build: EventBuilder) -> None:
    """Raters who agree on nothing (every vote a coin flip's, the attacker's too) give the model nothing to learn: the
    population's own disagreement is then near one half, and no one stands out against it."""
    pipeline = Pipeline(SETTINGS)
    coin = random.Random(5)
    batches, events = traffic(build, app_id, lambda quantity, on_topic: coin.random() < 0.5, seed=12)
    for batch in batches:
        store(sessions, pipeline, batch)
    assert not any(verdicts(sessions)[e] for ids in events.values() for e in ids)


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_filters_and_trainer_never_import_the_simulator() -> None:
    """The simulator's tastes are ground truth: a filter or trainer that read them would be told the answer."""
    sources = [*(ROOT / "feedback" / "filters").glob("*.py"), *(ROOT / "trainer").glob("*.py"),
               ROOT / "feedback" / "worker.py"]
    offenders = {str(p.relative_to(ROOT)): m for p in sources for m in _imports(p)
                 if m.startswith(("flywheel.simulation", "flywheel.demo"))}
    assert not offenders
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, feedback.worker, feedback.filters, trainer.scorer; "
         "print(sorted(m for m in sys.modules if m.startswith('flywheel.simulation')))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"  # nor through anything they import


def test_the_reward_models_scores_are_one_more_feature(sessions: sessionmaker[Session], app_id: int,
                                                      build: EventBuilder) -> None:
    """Answers whose text tells nothing apart (all the same): only the scores the trainer stored know which are good,
    so only with them does the model of the others' taste become confident enough to judge the contrarian."""
    users = [f"h{n}" for n in range(8)] + ["contra"]
    served = {user: [build.completion(app_id, answer="Here is an answer.") for _ in range(14)] for user in users}
    answers = [c for user in users for c in served[user]]
    good = {c.response_id for c in answers[::2]}
    votes = [build.thumbs(app_id, c.response_id, user_id=user, rating="up" if (c.response_id in good) != (
        user == "contra") else "down", **after(c, 30)) for user in users for c in served[user]]
    store(sessions, Pipeline(SETTINGS), answers)
    for scores in (False, True):
        pipeline = Pipeline(SETTINGS, StoredRewardScores(sessions))
        if scores:
            with transaction(sessions) as session:
                session.add_all(RewardScore(response_id=c.response_id, score=1.0 if c.response_id in good else -1.0,
                                            run_id="r", model_accuracy=0.9) for c in answers)
        with transaction(sessions) as session:
            flags = pipeline.consensus.review(_state(session, pipeline, votes), {(app_id, u) for u in users})
        assert [f.rater[1] for f in flags] == (["contra"] if scores else [])


def _state(session: Session, pipeline: Pipeline, votes: Sequence[Event]) -> FilterState:
    """The pipeline's state after ``votes`` on stored answers, all accepted (the consensus alone is under test)."""
    pipeline.begin(session, votes)
    for vote in votes:
        assert not isinstance(vote, CompletionEvent)
        pipeline.state.record(vote_of(vote), accepted=True)
    return pipeline.state
