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

A campaign of many small accounts (a few votes each) leaves too little history per account
for that test, so coordination is tested as well: accounts whose votes fall on the same
prompts (the prompts they share carry at least ``cohort_overlap`` of each one's votes, as
when a script hands every account the same questions) form a cohort, and a cohort of
``min_accounts`` or more is tested as one rater, its members' endorsements pooled. People
who happen to ask the same popular questions form cohorts too; what condemns a cohort is
the pooled test, the same as for one account (corrected for the number of features a pool
carries): its endorsements concentrate on a feature travelling across prompts far beyond
chance. Only accounts with ``min_endorsements`` votes join cohorts. Then each member whose
own endorsements carry the feature at ``min_lift`` times its base rate or more is a member of
the campaign, however few its votes; one who shares the prompts but not the pattern (an
honest rater of the same popular questions) is not, unless the cohort is a campaign's script:
when at least ``cohort_majority`` of a cohort are members of one campaign, the rest of it
(accounts whose few votes fell on answers without the feature, so they had nothing of it to
endorse) ride with it and are flagged too, their evidence marked ``rider``. An honest rater
would have to ask mostly the campaign's scripted questions, among a cohort that is nearly all
campaign, to be caught this way.

The search runs beside the stream (``background.py``): ``prepare`` copies what it reads of the
state into a ``Snapshot`` in the batch (references to the frozen answers and votes: milliseconds),
and ``decide`` does the work in a thread: cutting every new answer into features (most of a
first search's seconds), the tests and the cohorts. Memberships are sticky across searches (a
rater found a member stays one), so searches run one at a time and in order.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from feedback.filters.base import Answer, FilterState, Flag, Rater
from feedback.filters.settings import FilterSettings

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


@dataclass(frozen=True)
class Snapshot:
    """What a campaign search reads of the filter state, copied in the batch so that the search can run in a thread
    while later batches change the state (the copies hold references: answers and votes are frozen records)."""

    raters: list[Rater]  # tested one by one: those with new votes, sorted
    state: FilterState  # the answers (in the order the state learnt them), pairs, votes and flags, as they were


@dataclass(kw_only=True)
class CampaignFilter:
    min_accounts: int
    min_endorsements: int
    min_hits: int
    min_prompts: int
    max_feature_share: float
    min_lift: float
    max_p_value: float
    cohort_overlap: float
    cohort_majority: float = 1.0
    name: str = "campaigns"
    reasons: tuple[str, ...] = ("campaign",)
    _features: dict[str, frozenset[str]] = field(default_factory=dict)
    _answers_with: Counter[str] = field(default_factory=Counter)
    _prompts_with: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    members: dict[str, dict[Rater, dict[str, float]]] = field(default_factory=lambda: defaultdict(dict))
    riders: dict[str, dict[Rater, dict[str, float]]] = field(default_factory=lambda: defaultdict(dict))

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> CampaignFilter:
        s = settings
        return cls(min_accounts=s.campaign_min_accounts, min_endorsements=s.campaign_min_endorsements,
                   min_hits=s.campaign_min_hits, min_prompts=s.campaign_min_prompts,
                   max_feature_share=s.campaign_max_feature_share, min_lift=s.campaign_min_lift,
                   max_p_value=s.campaign_max_p_value, cohort_overlap=s.campaign_cohort_overlap,
                   cohort_majority=s.campaign_cohort_majority)

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
        snapshot = self.prepare(state, raters)
        return [] if snapshot is None else self.decide(snapshot)

    def prepare(self, state: FilterState, raters: set[Rater]) -> Snapshot | None:
        """The part of a search that reads the state (cheap): shallow copies of what ``decide`` looks at, the votes
        of every rater included (cohorts link anyone). None before any answer is known."""
        if not state.answers:
            return None
        copy = FilterState(answers=dict(state.answers), pairs={p: list(a) for p, a in state.pairs.items()},
                           votes={r: list(v) for r, v in state.votes.items()},
                           flags={r: dict(f) for r, f in state.flags.items()})
        return Snapshot(sorted(raters), copy)

    def decide(self, snapshot: Snapshot) -> list[Flag]:
        """The costly part of a search, on a snapshot only: safe in another thread than the state's, one search at
        a time (it indexes answers and records memberships for the next)."""
        state = snapshot.state
        for answer in list(state.answers.values())[len(self._features):]:  # answers are only ever appended
            self._index(answer)
        total = len(self._features)
        for rater in snapshot.raters:
            endorsed = self._endorsed(state, rater)
            for feature, stats in self._beyond_chance(endorsed, total).items():
                self.members[feature][rater] = stats
        for cohort in self._cohorts(state):
            pooled = [a for rater in cohort for a in self._endorsed(state, rater)]
            for feature, stats in self._beyond_chance(pooled, total, corrected=True).items():
                cohort_stats = {"cohort_hits": stats["hits"], "cohort_endorsements": stats["endorsements"],
                                "base_rate": stats["base_rate"], "p_value": stats["p_value"]}
                for rater in cohort:
                    endorsed = self._endorsed(state, rater)
                    hits = sum(feature in self._features[a.response_id] for a in endorsed)
                    if endorsed and hits / len(endorsed) >= self.min_lift * stats["base_rate"]:
                        self.members[feature][rater] = {"hits": hits, "endorsements": len(endorsed), **cohort_stats}
                found = [rater for rater in cohort if rater in self.members[feature]]
                if len(found) >= self.cohort_majority * len(cohort):
                    for rater in cohort:
                        if rater not in self.members[feature]:
                            self.riders[feature][rater] = {"rider": True, "cohort_members": len(found),
                                                           "cohort_size": len(cohort), **cohort_stats}
        return self._flags(state)

    def _endorsed(self, state: FilterState, rater: Rater) -> list[Answer]:
        return [a for a in map(state.endorsed, state.votes.get(rater, [])) if a is not None]

    def _beyond_chance(
        self, endorsed: list[Answer], total: int, corrected: bool = False
    ) -> dict[str, dict[str, float]]:
        """Candidate features these endorsements carry far beyond their base rate, with the statistics.

        ``corrected`` divides ``max_p_value`` by the number of features tested (Bonferroni): a
        pooled cohort carries thousands of n-grams, and one of them is bound to look rare by chance.
        """
        found: dict[str, dict[str, float]] = {}
        if len(endorsed) < self.min_endorsements:
            return found
        hits = Counter(f for a in endorsed for f in self._features[a.response_id])
        max_p_value = self.max_p_value / max(1, len(hits)) if corrected else self.max_p_value
        for feature, k in hits.items():
            if k < self.min_hits:
                continue
            q = self._answers_with[feature] / total
            if q > self.max_feature_share or len(self._prompts_with[feature]) < self.min_prompts:
                continue
            if k / len(endorsed) < self.min_lift * q:
                continue
            p_value = binomial_tail(k, len(endorsed), q)
            if p_value <= max_p_value:
                found[feature] = {"hits": k, "endorsements": len(endorsed), "base_rate": round(q, 4),
                                  "p_value": p_value}
        return found

    def _cohorts(self, state: FilterState) -> list[list[Rater]]:
        """Groups of ``min_accounts`` or more raters linked by votes on the same prompts (see the module doc)."""
        prompts: dict[Rater, Counter[str]] = {}
        for rater, votes in state.votes.items():
            asked = Counter(answers[0].prompt_hash for answers in map(state.answers_of, votes) if answers)
            if sum(asked.values()) >= self.min_endorsements:  # a vote or two share prompts by chance
                prompts[rater] = asked
        askers: dict[str, list[Rater]] = defaultdict(list)
        for rater, asked in prompts.items():
            for prompt in asked:
                askers[prompt].append(rater)
        root = {rater: rater for rater in prompts}

        def find(rater: Rater) -> Rater:
            while root[rater] != rater:
                root[rater] = root[root[rater]]
                rater = root[rater]
            return rater

        def covered(asked: Counter[str], shared: set[str]) -> bool:
            return sum(asked[p] for p in shared) >= self.cohort_overlap * sum(asked.values())

        for rater, asked in prompts.items():
            for other in {o for prompt in asked for o in askers[prompt] if o > rater}:
                shared = asked.keys() & prompts[other].keys()
                if covered(asked, shared) and covered(prompts[other], shared):
                    root[find(other)] = find(rater)
        groups: dict[Rater, list[Rater]] = defaultdict(list)
        for rater in sorted(prompts):
            groups[find(rater)].append(rater)
        return [group for group in groups.values() if len(group) >= self.min_accounts]

    def _flags(self, state: FilterState) -> list[Flag]:
        best: dict[Rater, tuple[float, str]] = {}
        for feature, members in self.members.items():
            if len(members) < self.min_accounts:
                continue
            for rater, stats in members.items():
                if rater not in best or (stats["p_value"], feature) < best[rater]:
                    best[rater] = (stats["p_value"], feature)
            for rater, stats in self.riders[feature].items():
                if rater not in members and rater not in best:
                    best[rater] = (stats["p_value"], feature)
        flags = []
        for rater, (_p, feature) in sorted(best.items()):
            if "campaign" in state.flags.get(rater, {}):
                continue
            accounts = sorted(self.members[feature])
            evidence = {
                "feature": feature,
                **(self.members[feature].get(rater) or self.riders[feature][rater]),
                "accounts": [f"{app}:{user}" for app, user in accounts[:50]],
                "group_size": len(accounts),
            }
            flags.append(Flag(rater, "campaign", evidence))
        return flags
