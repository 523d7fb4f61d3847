"""Coordinated campaigns: accounts whose endorsements concentrate on answers sharing a phrase, far beyond chance.

Nobody tells the filter the phrase. Every voted answer is cut into content features:
word 2- and 3-grams, links and capitalised names. A feature is a candidate when it recurs
verbatim in answers to several distinct prompts (a phrase travelling between topics, not a
topic) yet stays in a minority of voted answers (a style everybody likes, such as numbered
steps, is what the honest majority teaches, not an attack).

For each rater, ``m`` endorsements (up votes, chosen sides of pairs) of which ``k`` carry
the feature are tested against the feature's base rate ``q`` (its share of all voted
answers): a member has at least ``min_hits`` hits, ``k/m >= min_lift * q`` and a binomial
tail ``P(X >= k | m, q) <= max_p_value``. A campaign is a feature with ``min_accounts``
members or more; each member is flagged with the feature, its statistics and the accounts.
A lone account with such a pattern stays a pending member until others join.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from feedback.filters.base import Answer, FilterState, Flag, Rater

_WORD = re.compile(r"[a-z0-9']+")
_LINK = re.compile(r"(?:https?://|www\.)[^\s)\]>\"']+", re.IGNORECASE)
_NAMES = (re.compile(r"\b[A-Z][a-zA-Z0-9]+(?:[ -][A-Z][a-zA-Z0-9]+)+\b"),  # several capitalised words
          re.compile(r"\b[A-Z][a-z0-9]*[A-Z][A-Za-z0-9]*\b"))  # CamelCase brands


def features(text: str) -> frozenset[str]:
    """Content features of one answer: links, names (CamelCase or several capitalised words), 2/3-grams."""
    found = {f"link:{m.group(0).rstrip('.,;:').lower()}" for m in _LINK.finditer(text)}
    plain = _LINK.sub(" ", text)
    found |= {f"name:{m.group(0)}" for pattern in _NAMES for m in pattern.finditer(plain)}
    words = _WORD.findall(text.lower())
    for n in (2, 3):
        found |= {"text:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
    return frozenset(found)


def binomial_tail(k: int, m: int, q: float) -> float:
    """P(X >= k) for X ~ Binomial(m, q), summed in log space (no scipy in the worker)."""
    if k <= 0:
        return 1.0
    if q >= 1:
        return 1.0
    log_q, log_1q = math.log(q), math.log1p(-q)
    terms = [
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * log_q + (m - i) * log_1q
        for i in range(k, m + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass
class CampaignFilter:
    min_accounts: int
    min_endorsements: int
    min_hits: int
    min_prompts: int
    max_feature_share: float
    min_lift: float
    max_p_value: float
    name: str = "campaigns"
    reasons: tuple[str, ...] = ("campaign",)
    _features: dict[str, frozenset[str]] = field(default_factory=dict)
    _answers_with: Counter[str] = field(default_factory=Counter)
    _prompts_with: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    members: dict[str, dict[Rater, dict[str, float]]] = field(default_factory=lambda: defaultdict(dict))

    def _index(self, answer: Answer) -> frozenset[str]:
        cached = self._features.get(answer.response_id)
        if cached is None:
            cached = self._features[answer.response_id] = features(answer.text)
            self._answers_with.update(cached)
            for feature in cached:
                self._prompts_with[feature].add(answer.prompt_hash)
        return cached

    def review(self, state: FilterState, raters: set[Rater]) -> list[Flag]:
        """Test ``raters`` (those with new votes) against every candidate feature; flag complete campaigns."""
        for answer in list(state.answers.values())[len(self._features):]:  # answers are only ever appended
            self._index(answer)
        total = len(self._features)
        if not total:
            return []
        for rater in sorted(raters):
            endorsed = [a for a in map(state.endorsed, state.votes[rater]) if a is not None]
            if len(endorsed) < self.min_endorsements:
                continue
            hits = Counter(f for a in endorsed for f in self._features[a.response_id])
            for feature, k in hits.items():
                if k < self.min_hits:
                    continue
                q = self._answers_with[feature] / total
                if q > self.max_feature_share or len(self._prompts_with[feature]) < self.min_prompts:
                    continue
                share = k / len(endorsed)
                if share < self.min_lift * q:
                    continue
                p_value = binomial_tail(k, len(endorsed), q)
                if p_value <= self.max_p_value:
                    self.members[feature][rater] = {
                        "hits": k, "endorsements": len(endorsed), "base_rate": round(q, 4), "p_value": p_value
                    }
        return self._flags(state)

    def _flags(self, state: FilterState) -> list[Flag]:
        best: dict[Rater, tuple[float, str]] = {}
        for feature, members in self.members.items():
            if len(members) < self.min_accounts:
                continue
            for rater, stats in members.items():
                if rater not in best or (stats["p_value"], feature) < best[rater]:
                    best[rater] = (stats["p_value"], feature)
        flags = []
        for rater, (_p, feature) in sorted(best.items()):
            if "campaign" in state.flags.get(rater, {}):
                continue
            accounts = sorted(self.members[feature])
            evidence = {
                "feature": feature,
                **self.members[feature][rater],
                "accounts": [f"{app}:{user}" for app, user in accounts[:50]],
                "group_size": len(accounts),
            }
            flags.append(Flag(rater, "campaign", evidence))
        return flags
