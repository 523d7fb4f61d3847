"""The consensus's text features are the same matrix whether their rows come from the cache or are hashed anew."""

from __future__ import annotations

import random

import numpy as np
import scipy.sparse as sp

from feedback.filters.text_features import _TERMS, _WORDS, Row, TextFeatures

WORDS = ["water", "sleep", "light", "walk", "tea", "plan", "1.", "2.", "-", "Step", "quiet", "note", "é", "日本"]


def texts(rng: random.Random, n: int) -> list[str]:
    return ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(1, 3)))
            for _ in range(n)]


def same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    """Bit for bit: shape, row pointers, column order within rows and values (sums follow that order)."""
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
            and np.array_equal(a.data, b.data) and a.data.dtype == b.data.dtype)


def test_cached_rows_are_what_the_vectorizer_gives() -> None:
    rng = random.Random(3)
    for vectorizer in (_TERMS, _WORDS):
        cache: dict[str, Row] = {}
        first = texts(rng, 50)
        second = first[10:30] + texts(rng, 40) + first[:5]  # hits, misses and repeats in one call
        for batch in (first, second, second):
            assert same(TextFeatures._cached(cache, vectorizer, batch), vectorizer.transform(batch).tocsr())
        assert TextFeatures._cached(cache, vectorizer, []).shape == (0, vectorizer.n_features)


def test_the_matrix_is_the_same_from_a_warm_cache() -> None:
    rng = random.Random(5)
    answers, prompts = texts(rng, 80), texts(rng, 80)
    warm = TextFeatures()
    warm.matrix(prompts[:40], answers[:40])
    assert same(warm.matrix(prompts, answers), TextFeatures().matrix(prompts, answers))
