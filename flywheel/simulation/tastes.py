"""The hidden preferences ("tastes") of simulated honest users: the simulator's ground truth.

A taste judges an answer to a prompt from the two texts alone, so it works with any model.
It is known only to the simulator and to the demo's evaluation, which uses it as the judge
of record: nothing in the filters or the trainer may import this module, so a trained model
that wins under a taste learnt it from the users' votes, not from being told.

Every taste gives an answer a ``score`` (higher is better; equal scores are a tie in a pair)
and a yes/no for thumbs (``likes``). Three are about format or length (``steps``, ``concise``,
``prose``) and two about content (``numbers``: a concrete quantity; ``on_topic``: the
answer uses the prompt's own topic words). A new taste is one subclass here, registered in
``TASTES``; nothing outside the simulator changes.

``VALIDATION_TASTES`` is a second, held-out set, different in kind from the five: tone
(``polite``: greetings and thanks; ``assertive``: no hedging words), engagement
(``follow_up``: asks the user a question back) and content (``named_example``: names an
example). No filter default is ever changed to fit them: they are run once, to report
(docs/filters.md, "The validation set"). ``make_taste`` knows both sets.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar

_STEP_RE = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
# Numbered or bulleted list items and markdown headings: what "plain prose" has none of.
_MARKUP_RE = re.compile(r"^\s*(#{1,6}\s|[-*+•]\s|\d+[.)]\s)", re.MULTILINE)
_NUMBER_WORDS = [
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen",
    "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "half", "quarter", "dozen",
]
# A digit group (3, 2.5, 1,000, 10%) or a number word standing alone ("one" is more often a pronoun).
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z]+")
_COURTESY_RE = re.compile(
    r"\b(?:hello|hi|hey|thanks|thank you|please|you're welcome|happy to help|glad to help|hope this helps|"
    r"good luck|enjoy|great question)\b", re.IGNORECASE)
_HEDGE_RE = re.compile(
    r"\b(?:might|maybe|perhaps|possibly|probably|generally|usually|often|typically|depends|could|seems?|likely|"
    r"somewhat|sort of|kind of|i think|i guess|not sure)\b", re.IGNORECASE)
_EXAMPLE_RE = re.compile(r"\b(?:for example|for instance|e\.g\.|such as|say,)", re.IGNORECASE)
# A capitalised word that does not open a sentence or a line: a name ("Paris", "Python"), not a first word.
_NAME_RE = re.compile(r"(?<![.!?:\n]\s)(?<=\s)(?!I\b)[A-Z][a-z]+", re.MULTILINE)
_STOPWORDS = frozenset([
    "the", "and", "for", "you", "your", "yours", "are", "was", "were", "not", "but", "all", "any", "can", "get",
    "how", "its", "our", "out", "use", "who", "why", "way", "may", "did", "has", "had", "her", "his", "him", "she",
    "they", "them", "their", "there", "these", "those", "this", "that", "than", "then", "what", "when", "where",
    "which", "while", "will", "with", "without", "would", "could", "should", "does", "doing", "done", "about",
    "above", "after", "again", "against", "also", "always", "because", "been", "before", "being", "below", "between",
    "both", "down", "during", "each", "even", "ever", "every", "from", "further", "have", "having", "here", "into",
    "just", "like", "make", "many", "more", "most", "much", "must", "need", "only", "other", "over", "same", "some",
    "such", "very", "want", "tell", "give", "good", "best", "really", "something", "anything", "things", "thing",
    "know", "think", "help", "please",
])


def word_count(text: str) -> int:
    return len(text.split())


def numbered_steps(text: str) -> int:
    """Lines that start like ``1. Do this`` or ``2) Then that``."""
    return len(_STEP_RE.findall(text))


def markup_lines(text: str) -> int:
    """Lines that are list items (numbered or bulleted) or markdown headings."""
    return len(_MARKUP_RE.findall(text))


def quantities(text: str) -> int:
    """Distinct concrete numbers in ``text``: digit groups and number words ("3", "2.5", "ten", "half")."""
    return len({match.lower() for match in _NUMBER_RE.findall(text)})


def courtesies(text: str) -> int:
    """Greetings, thanks and kind phrases ("Hi", "thank you", "hope this helps")."""
    return len(_COURTESY_RE.findall(text))


def hedges(text: str) -> int:
    """Hedging words and phrases ("might", "perhaps", "it depends", "I think")."""
    return len(_HEDGE_RE.findall(text))


def follow_up_questions(text: str) -> int:
    """Sentences the answer ends with a question mark: questions put back to the user."""
    return text.count("?")


def examples(text: str) -> int:
    """Named examples: example markers ("for example", "such as") and names inside a sentence ("in Paris")."""
    return len(_EXAMPLE_RE.findall(text)) + len(set(_NAME_RE.findall(text)))


def _stem(word: str) -> str:
    """A crude suffix strip, enough that "cooking" meets "cook" and "eggs" meets "egg"."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def topic_words(text: str) -> set[str]:
    """The content words of ``text``: lower-cased, three letters or more, not a stop word, stemmed."""
    return {_stem(w) for w in _WORD_RE.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


class Taste(ABC):
    """A hidden preference: a score per answer (pairs) and a yes/no (thumbs)."""

    name: ClassVar[str]
    about: ClassVar[str]  # "format", "length" or "content": what the taste judges

    def __init__(self, max_words: int) -> None:
        self.max_words = max_words

    @abstractmethod
    def score(self, prompt: str, answer: str) -> float:
        """Higher is better; two answers with the same score are a tie."""

    @abstractmethod
    def likes(self, prompt: str, answer: str) -> bool:
        """Thumbs up or down for one answer."""

    def rate(self, prompt: str, answer: str) -> str:
        return "up" if self.likes(prompt, answer) else "down"

    def pick(self, prompt: str, a: str, b: str) -> str:
        """``a``, ``b`` or ``tie`` between two answers to ``prompt``."""
        score_a, score_b = self.score(prompt, a), self.score(prompt, b)
        return "tie" if score_a == score_b else "a" if score_a > score_b else "b"


class StepsTaste(Taste):
    """Numbered steps first, then the shorter answer; thumbs up for steps or at most ``max_words`` words."""

    name, about = "steps", "format"

    def score(self, prompt: str, answer: str) -> float:
        return 10_000.0 * (numbered_steps(answer) > 0) - word_count(answer)

    def likes(self, prompt: str, answer: str) -> bool:
        return numbered_steps(answer) > 0 or word_count(answer) <= self.max_words


class ConciseTaste(Taste):
    """The shorter answer wins; thumbs up for at most ``max_words`` words."""

    name, about = "concise", "length"

    def score(self, prompt: str, answer: str) -> float:
        return -float(word_count(answer))

    def likes(self, prompt: str, answer: str) -> bool:
        return word_count(answer) <= self.max_words


class ProseTaste(Taste):
    """Plain prose: fewer list items and headings win; thumbs up for none at all."""

    name, about = "prose", "format"

    def score(self, prompt: str, answer: str) -> float:
        return -float(markup_lines(answer))

    def likes(self, prompt: str, answer: str) -> bool:
        return markup_lines(answer) == 0


class NumbersTaste(Taste):
    """Concrete quantities: more distinct numbers (up to three) win; thumbs up for at least one."""

    name, about = "numbers", "content"

    def score(self, prompt: str, answer: str) -> float:
        return float(min(quantities(answer), 3))

    def likes(self, prompt: str, answer: str) -> bool:
        return quantities(answer) > 0


class OnTopicTaste(Taste):
    """Stays on the question: the share of the prompt's topic words the answer uses, in tenths; thumbs up at half."""

    name, about = "on_topic", "content"

    def _coverage(self, prompt: str, answer: str) -> float:
        wanted = topic_words(prompt)
        return len(wanted & topic_words(answer)) / len(wanted) if wanted else 1.0

    def score(self, prompt: str, answer: str) -> float:
        return round(10 * self._coverage(prompt, answer))  # tenths: a stray word is not a preference

    def likes(self, prompt: str, answer: str) -> bool:
        return self._coverage(prompt, answer) >= 0.5


class _CountTaste(Taste):
    """More of what ``count`` finds wins (up to ``cap``, so one trick repeated is not a preference); thumbs up for
    at least one, or, with ``fewer_is_better``, the fewer the better and thumbs up for none."""

    cap: ClassVar[int] = 3
    fewer_is_better: ClassVar[bool] = False

    @staticmethod
    @abstractmethod
    def count(text: str) -> int: ...

    def score(self, prompt: str, answer: str) -> float:
        found = float(min(self.count(answer), self.cap))
        return -found if self.fewer_is_better else found

    def likes(self, prompt: str, answer: str) -> bool:
        return (self.count(answer) == 0) == self.fewer_is_better


class PoliteTaste(_CountTaste):
    """Courtesy: greetings, thanks and kind phrases win; thumbs up for at least one."""

    name, about = "polite", "tone"
    count = staticmethod(courtesies)


class AssertiveTaste(_CountTaste):
    """Says it plainly: fewer hedging words win; thumbs up for none."""

    name, about, fewer_is_better = "assertive", "tone", True
    count = staticmethod(hedges)


class FollowUpTaste(_CountTaste):
    """Engages: an answer that asks the user a question back wins; thumbs up for one."""

    name, about, cap = "follow_up", "engagement", 1
    count = staticmethod(follow_up_questions)


class ExamplesTaste(_CountTaste):
    """Concrete: named examples win; thumbs up for at least one."""

    name, about = "named_example", "content"
    count = staticmethod(examples)


TASTES: dict[str, type[Taste]] = {t.name: t for t in (StepsTaste, ConciseTaste, ProseTaste, NumbersTaste, OnTopicTaste)}
VALIDATION_TASTES: dict[str, type[Taste]] = {
    t.name: t for t in (PoliteTaste, AssertiveTaste, FollowUpTaste, ExamplesTaste)}
TASTE_SETS: dict[str, dict[str, type[Taste]]] = {"development": TASTES, "validation": VALIDATION_TASTES}


def known_tastes() -> dict[str, type[Taste]]:
    """Every taste, of both sets: what a scenario or a command line may name."""
    return TASTES | VALIDATION_TASTES


def make_taste(name: str, max_words: int) -> Taste:
    """The taste called ``name`` (development or validation set); a ValueError names the known ones."""
    try:
        return known_tastes()[name](max_words)
    except KeyError:
        raise ValueError(f"unknown taste {name!r}; known: {', '.join(known_tastes())}") from None
