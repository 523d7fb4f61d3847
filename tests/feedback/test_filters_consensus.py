"""The consensus filter: raters who vote only on their own answers, judged against the others' learnt taste."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import FlaggedRater
from feedback.events import Event
from feedback.filters import Pipeline
from feedback.filters.text_features import SIZE_BANDS, TextFeatures, answer_terms, shape
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, filter_settings, store, verdicts

WORDS = ("the a cup of water salt pan heat then add stir wait serve cool rinse dry fold cut mix"  # noqa: SIM905
         .split())


def _text(rng: random.Random) -> str:
    words = rng.randint(4, 50)
    if rng.random() < 0.3:
        lines = [f"{n + 1}. " + " ".join(rng.choices(WORDS, k=max(1, words // 3))) for n in range(3)]
        return "\n".join(lines)
    return " ".join(rng.choices(WORDS, k=words)) + "."


def _steps(text: str) -> bool:
    return text.startswith("1. ")


def _likes(text: str) -> bool:
    """The taste nobody tells the filter: numbered steps, or short."""
    return _steps(text) or len(text.split()) <= 20


def _prefers_a(a: str, b: str) -> bool | None:
    rank_a, rank_b = (_steps(a), -len(a.split())), (_steps(b), -len(b.split()))
    return None if rank_a == rank_b else rank_a > rank_b


def test_the_representation_sees_shapes_layout_and_relevance() -> None:
    """Token shapes and line starts are generic (the same for every text), yet tell digits and list layouts apart."""
    assert shape("Paris") == "Xx" and shape("2.5") == "d.d" and shape("-") == "-"
    terms = answer_terms("1. Boil 2.5 cups\n- stir")
    assert {"w:boil", "b:boil 2.5", "s:d.d", "l:d", "l:-"} <= set(terms)
    rows = TextFeatures().matrix(["how do i boil an egg"] * 4,
                                 ["Boil the egg gently.", "Wear a warm coat.", "Boil an egg for a while.", "Sure."])
    cosine = rows[:, -SIZE_BANDS - 2].toarray().ravel()  # standardised: only the order matters
    assert cosine[0] > cosine[1] and cosine[2] > cosine[1] and cosine[2] > cosine[3]


def test_rater_against_the_consensus_is_flagged_without_shared_items(
        sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    """Honest raters (5 % slips), a slow attacker (40 % inverted) and a coin flipper, each on their own answers."""
    pipeline = Pipeline(filter_settings(bot_min_votes=1000, campaign_min_accounts=1000))
    rng = random.Random(7)
    kinds = {f"honest{n}": 0.05 for n in range(14)} | {"attacker": 0.4}
    events: dict[str, list[str]] = {user: [] for user in kinds}
    for _round in range(4):
        batch: list[Event] = []
        for user, against in kinds.items():
            for _ in range(4):
                flip = rng.random() < against
                if rng.random() < 0.5:
                    answer = build.completion(app_id, answer=_text(rng))
                    up = _likes(answer.answer) != flip
                    vote: Event = build.thumbs(app_id, answer.response_id, user_id=user, rating="up" if up else "down",
                                               **after(answer, 30))
                    batch += [answer, vote]
                else:
                    a, b = build.pair(app_id)
                    a, b = a.model_copy(update={"answer": _text(rng)}), b.model_copy(update={"answer": _text(rng)})
                    prefers_a = _prefers_a(a.answer, b.answer)
                    choice = "tie" if prefers_a is None else "a" if prefers_a != flip else "b"
                    vote = build.pairwise(app_id, a.pair_id or "", user_id=user, choice=choice, **after(a, 30))
                    batch += [a, b, vote]
                events[user].append(vote.event_id)
        store(sessions, pipeline, batch)

    got = verdicts(sessions)
    assert all(got[e] == ["against_consensus"] for e in events["attacker"])  # retroactively, honest-looking ones too
    assert not any(got[e] for user, ids in events.items() if user != "attacker" for e in ids)
    with sessions() as session:
        flag = session.scalars(select(FlaggedRater)).one()
    assert flag.user_id == "attacker" and flag.reason == "against_consensus"
    assert flag.evidence["disagreements"] / flag.evidence["judged_votes"] >= 0.2
    assert flag.evidence["p_value"] <= 0.01


def test_no_consensus_without_a_population(sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    """One contrarian among too few votes of others is not judged: the model needs min_population."""
    pipeline = Pipeline(filter_settings(bot_min_votes=1000, consensus_min_population=1000))
    rng = random.Random(3)
    batch: list[Event] = []
    for user, flip in (("h", False), ("c", True)):
        for _ in range(12):
            answer = build.completion(app_id, answer=_text(rng))
            up = _likes(answer.answer) != flip
            batch += [answer, build.thumbs(app_id, answer.response_id, user_id=user, rating="up" if up else "down",
                                           **after(answer, 30))]
    store(sessions, pipeline, batch)
    assert not any(verdicts(sessions).values())


def test_condemnation_needs_votes_a_rate_and_a_small_tail() -> None:
    """A rater tested alone (``condemns``: the per-rater rule ``tests/bench/consensus_power.py`` tabulates)."""
    consensus = Pipeline(filter_settings(consensus_max_p_value=0.01)).consensus  # 10 votes, 20 %, tail 0.01
    assert consensus.condemns(9, 9, 0.05) is None  # too few judged votes, however damning
    assert consensus.condemns(10, 3, 0.05) is None  # 3 slips in 10 at 5 %: tail 0.012, an unlucky honest rater
    assert consensus.condemns(10, 4, 0.05) == pytest.approx(0.001, abs=5e-4)
    assert consensus.condemns(400, 40, 0.05) is None  # significant, but 10 % is a taste, not an attack
    assert consensus.condemns(400, 80, 0.05) is not None
