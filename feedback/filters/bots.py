"""Bot patterns: users whose votes carry no information (always A, always up, the same comment).

Labels are compared within each kind of vote: thumbs and pairs have different label sets, so
a script that always says "up" to single answers and "A" to pairs has two labels overall
but no information in either kind. The share that counts is the votes carrying their kind's
most common label, over all votes.

Judged on history, so it flags the user once there is enough of it; the pipeline then
moves their earlier accepted votes to quarantine too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from feedback.filters.base import FilterState, Flag, Rater
from feedback.filters.settings import FilterSettings


@dataclass(kw_only=True)
class BotFilter:
    min_votes: int
    max_label_share: float
    min_comments: int
    max_comment_share: float
    name: str = "bots"
    reasons: tuple[str, ...] = ("bot_pattern",)

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> BotFilter:
        return cls(min_votes=settings.bot_min_votes, max_label_share=settings.bot_max_label_share,
                   min_comments=settings.bot_min_comments, max_comment_share=settings.bot_max_comment_share)

    def review(self, state: FilterState, raters: set[Rater]) -> list[Flag]:
        flags = []
        for rater in sorted(raters):
            if "bot_pattern" in state.flags.get(rater, {}):
                continue
            votes = state.votes[rater]
            top = {kind: Counter(v.label for v in votes if v.kind == kind).most_common(1)[0]
                   for kind in sorted({v.kind for v in votes})}
            share = sum(count for _, count in top.values()) / len(votes)
            if len(votes) >= self.min_votes and share >= self.max_label_share:
                evidence = {"pattern": "same_label", "labels": {kind: label for kind, (label, _) in top.items()},
                            "share": round(share, 3), "votes": len(votes)}
                flags.append(Flag(rater, "bot_pattern", evidence))
                continue
            comments = [" ".join(v.comment.lower().split()) for v in votes if v.comment and v.comment.strip()]
            if len(comments) >= self.min_comments:
                comment, count = Counter(comments).most_common(1)[0]
                if count / len(comments) >= self.max_comment_share:
                    evidence = {"pattern": "same_comment", "comment": comment[:200],
                                "share": round(count / len(comments), 3), "comments": len(comments)}
                    flags.append(Flag(rater, "bot_pattern", evidence))
        return flags
