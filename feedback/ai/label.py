"""AI feedback (RLAIF): a judge model served by the engine picks between the two answers of stored pairs.

**Which pairs.** Pairs served to users (not those constitutional revisions write) on which no
end user's vote was accepted (a quarantined vote is no verdict), newest first, not yet judged by
this judge, with two different answers: up to ``limit`` a run. A judge adds labels where people
gave none; where they did, theirs decide the pair in training anyway
(``trainer.pairs.PAIR_DECIDERS``).

**How.** The rubric (a text; ``rubric.md`` ships), the conversation, and the two answers as
"Answer 1" and "Answer 2"; then the same with the answers swapped, in a second request. The judge
replies "1" or "2" (vLLM's structured outputs allow nothing else), greedily. Picking the same
answer in both orders is a verdict, ``a`` or ``b``. Picking the same *position* in both is
position bias, not a preference: the verdict is ``tie``, stored like a person's tie, which trains
nothing but counts as judged (a re-run does not ask again, and ops see how often the judge could
not tell the answers apart from their order). A reply that is neither stores nothing: the pair is
asked again next run.

**Once per judge and pair.** The event id is derived from the judge's name and the pair
(``ai-<sha256>``), so the worker stores a verdict sent twice once, and a run skips pairs whose
verdict is already stored or quarantined. The voter is ``ai:<judge>`` of the app the pair was
served to (the integrity check wants that app). A new rubric gives the same judge no second vote
on a pair; each verdict's comment names the hash of the rubric it was made under.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback.ai.batch import Outcome
from feedback.ai.engine import Engine
from feedback.db.models import Completion, Feedback
from feedback.events import CONSTITUTION_VERSION, HUMAN, ChatMessage, PairwiseEvent
from feedback.store import known_events

DEFAULT_RUBRIC = Path(__file__).with_name("rubric.md")
POSITIONS = ("1", "2")
UNPARSED = "unparsed"
_PAGE = 500  # candidate pairs read per query while looking for ``limit`` unjudged ones


@dataclass(frozen=True)
class Rubric:
    text: str

    @classmethod
    def load(cls, path: Path = DEFAULT_RUBRIC) -> Rubric:
        text = path.read_text().strip()
        if not text:
            raise ValueError(f"the rubric {path} is empty")
        return cls(text)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Pair:
    """The two answers of a served pair, as the judge sees them."""

    pair_id: str
    app_id: int
    messages: tuple[ChatMessage, ...]
    answer_a: str
    answer_b: str


def judge_rater(judge: str) -> str:
    """The judge's user id: its votes are its own rater's, apart from every end user's (``feedback.source``)."""
    return f"ai:{judge}"


def verdict_event_id(judge: str, pair_id: str) -> str:
    """The one event id a judge's verdict on a pair can have: a re-run's verdict is a duplicate, stored once."""
    return "ai-" + hashlib.sha256(f"{judge}\n{pair_id}".encode()).hexdigest()[:40]


def pairs_to_label(session: Session, judge: str, limit: int) -> list[Pair]:
    """Up to ``limit`` pairs for ``judge``, newest first (see the module doc for which)."""
    decided = select(Feedback.pair_id).where(Feedback.source == HUMAN, Feedback.pair_id.is_not(None))
    newest = (
        select(Completion.pair_id, Completion.app_id)
        .where(Completion.pair_id.is_not(None), Completion.pair_id.not_in(decided),
               Completion.model_version != CONSTITUTION_VERSION)
        .group_by(Completion.pair_id, Completion.app_id)
        .order_by(func.max(Completion.created_at).desc(), Completion.pair_id)
    )
    found: list[Pair] = []
    for offset in itertools.count(step=_PAGE):
        page = [(str(pair_id), app_id) for pair_id, app_id in session.execute(newest.limit(_PAGE).offset(offset))]
        if not page:
            break
        known = known_events(session, {verdict_event_id(judge, pair_id) for pair_id, _ in page})
        wanted = [(pair_id, app_id) for pair_id, app_id in page
                  if (app_id, verdict_event_id(judge, pair_id)) not in known]
        sides = {c.response_id: c for c in session.scalars(
            select(Completion).where(Completion.pair_id.in_([pair_id for pair_id, _ in wanted])))}
        for pair_id, app_id in wanted:
            root = pair_id.removeprefix("pair_")
            a, b = sides.get(f"resp_{root}_a"), sides.get(f"resp_{root}_b")
            if a is None or b is None or a.answer == b.answer:
                continue
            messages = tuple(ChatMessage.model_validate(m) for m in a.messages)
            found.append(Pair(pair_id, app_id, messages, a.answer, b.answer))
            if len(found) == limit:
                return found
    return found


def question(rubric: Rubric, messages: Sequence[ChatMessage], first: str, second: str) -> list[dict[str, str]]:
    """The judge's request for one order of the answers."""
    conversation = "\n\n".join(f"{m.role.upper()}: {m.text}" for m in messages)
    return [{"role": "user", "content": (
        f"{rubric.text}\n\n## The conversation\n\n{conversation}\n\n## Answer 1\n\n{first}\n\n## Answer 2\n\n{second}"
        "\n\nWhich answer is better? Reply with 1 or 2 only."
    )}]


def _position(reply: str) -> str | None:
    text = reply.strip()
    return text[0] if text[:1] in POSITIONS else None


def judge_pair(engine: Engine, judge: str, rubric: Rubric, pair: Pair) -> Outcome:
    """Both orders, and the verdict they give together (see the module doc); ``unparsed`` when a reply is neither
    "1" nor "2"."""
    a_first = _position(engine.chat(judge, question(rubric, pair.messages, pair.answer_a, pair.answer_b), 2,
                                    POSITIONS).text)
    b_first = _position(engine.chat(judge, question(rubric, pair.messages, pair.answer_b, pair.answer_a), 2,
                                    POSITIONS).text)
    if a_first is None or b_first is None:
        return Outcome(UNPARSED)
    picked_a_first: Literal["a", "b"] = "a" if a_first == "1" else "b"
    picked_b_first: Literal["a", "b"] = "b" if b_first == "1" else "a"
    choice: Literal["a", "b", "tie"] = picked_a_first if picked_a_first == picked_b_first else "tie"
    event = PairwiseEvent(
        event_id=verdict_event_id(judge, pair.pair_id), app_id=pair.app_id, pair_id=pair.pair_id, choice=choice,
        user_id=judge_rater(judge), source="ai",
        comment=f"rubric {rubric.digest}: A shown first -> {picked_a_first}, B shown first -> {picked_b_first}",
    )
    return Outcome(choice, (event,))
