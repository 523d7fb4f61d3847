"""The non-word share the gates and the demo's evaluation read: garbled answers show, plain English and names do not."""

from __future__ import annotations

import pytest

from trainer.non_words import non_word_share


def test_plain_english_has_no_non_words() -> None:
    assert non_word_share("To check if an egg is fresh, put it in a bowl of cold water: fresh eggs sink.") == 0.0


def test_made_up_words_are_counted() -> None:
    # An answer a steps-taste round produced (SmolLM2, DPO past the point of sense).
    made_up = "**How to Make a Salmon Fillem on the Bake:**\n\n1. **Jeine Combine:** Salmon Fillemmmal, slash"
    assert non_word_share(made_up) == pytest.approx(3 / 14)  # fillem, jeine, fillemmmal


def test_short_junk_that_web_text_holds_passes() -> None:
    # The measure's blind spot, kept in view: "chek", "tok" and "tuch" are in wordfreq's web-text lists.
    assert non_word_share('1. **Chek** - "break seals" 2. **chek a moon** - "Sheer tok" 3. **san tuch*') == 0.0


def test_no_words_is_zero_not_an_error() -> None:
    assert non_word_share("1. 2. 3. ** -") == 0.0
