"""Words no word list of the answers' language knows: a policy that learnt to please and forgot how to write.

A reward model, a voter's taste or a judge can each reward an answer of the right shape whose words are
made up: SmolLM2 after DPO or KTO on a taste for short numbered answers wrote "**chek a moon**" and
"Salmon Fillemmmal" (docs/demo.md, docs/training.md). The drift gates need not see it (a few made-up words
in a short answer move the per-token KL little), so the gates read for it directly, against wordfreq's
frequency lists (built from web text, subtitles and books in 40-odd languages).
"""

from __future__ import annotations

import re
from functools import cache

from wordfreq import available_languages, zipf_frequency

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")  # letters of any script, with an apostrophe suffix


def non_word_share(text: str, language: str = "en") -> float:
    """Share of ``text``'s words (letters, with an apostrophe suffix) that wordfreq's ``language`` lists never saw.

    SmolLM2's own English answers score about 0.01 (names and rare terms); its answers after DPO had
    pushed a format past the point of sense scored 0.13 on average. Short junk that web text holds
    ("chek", "tok") passes: a floor, not a judge of sense. No words at all: 0.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(zipf_frequency(w, language) == 0 for w in words) / len(words) if words else 0.0


@cache
def known_language(language: str) -> bool:
    """Whether wordfreq has lists for ``language`` (a code such as ``en``, ``de``, ``pt``)."""
    return language in available_languages()
