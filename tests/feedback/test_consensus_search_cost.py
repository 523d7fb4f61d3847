"""The cheaper consensus search decides what the former one decided.

The search now fits a compressed design (proportional columns merged, ``merged_columns``) with one
BLAS thread. The compression is an exact reparametrisation of the penalised model: checked on a
small design fitted to a tight tolerance, and, for the verdicts, on a fixed synthetic history
against the filter as it was (``compress=False``, the BLAS library's threads).
"""

from __future__ import annotations

import random
import re

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from feedback.filters import Pipeline
from feedback.filters.consensus import ConsensusFilter, merged_columns
from feedback.filters.text_features import shape
from tests.bench.bench_consensus_search import first_search, verdicts
from tests.bench.synthetic_history import Population, build_history
from tests.feedback.filtering import filter_settings


def test_proportional_columns_are_one_group_and_the_rest_kept() -> None:
    x = sp.csr_matrix(np.array([
        # a   2a  -a   b    c (one row)  d (same row)  empty
        [1.0, 2.0, -1.0, 1.0, 0.0, 0.0, 0.0],
        [2.0, 4.0, -2.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 3.0, 0.5, -2.0, 0.0],
    ]))
    merge = merged_columns(x)
    assert merge.shape == (7, 3)  # {a, 2a, -a}, {b}, {c, d}; the empty column in none
    assert np.allclose((merge.T @ merge).toarray(), np.eye(3))  # orthonormal: the penalty is unchanged
    merged = (x @ merge).toarray()
    assert np.allclose(np.abs(merged[:, 0]), np.sqrt(1 + 4 + 1) * np.array([1, 2, 0]))
    assert np.allclose(np.abs(merged[:, 2]), [0, 0, np.hypot(0.5, 2.0)])


def test_the_compressed_fit_is_the_same_model() -> None:
    """Fitted to a tight tolerance, the design and its compression give the same coefficients and predictions."""
    rng = np.random.default_rng(3)
    base = sp.random(300, 40, density=0.1, random_state=4, format="csr")
    one_row = sp.csr_matrix((rng.normal(size=300), (np.arange(300), np.arange(300))), shape=(300, 300))
    x = sp.hstack([base, -2 * base[:, :10], one_row, 0.5 * one_row], format="csr")
    y = (base @ rng.normal(size=40) + rng.normal(scale=0.3, size=300) > 0).astype(float)
    merge = merged_columns(x)
    assert merge.shape[1] == 40 + 300
    fit = lambda design: LogisticRegression(C=2.0, fit_intercept=False, solver="newton-cg",  # noqa: E731
                                            tol=1e-10).fit(design, y).coef_[0]
    full, compressed = fit(x), merge @ fit(x @ merge)
    assert np.allclose(full, compressed, atol=1e-6)
    assert np.allclose(x @ full, x @ compressed, atol=1e-6)


def test_verdicts_are_identical_before_and_after_on_a_fixed_history() -> None:
    history = build_history(Population(honest=24, honest_votes=20, attackers=3, attacker_votes=30, flippers=2,
                                       flipper_votes=20, seed=5))
    _, after = first_search(history)
    _, before = first_search(history, compress=False, blas_threads=None)
    assert verdicts(after) == verdicts(before)
    assert "attacker" in {history.kinds[f.rater] for f in after}  # the history has something to find


def test_the_next_search_warm_starts_across_a_new_grouping() -> None:
    """Coefficients are kept in the design's own columns, so a later search with more votes (other groups) starts
    from them and decides as a fresh filter does."""
    small = build_history(Population(honest=16, honest_votes=16, attackers=2, flippers=0, seed=6))
    large = build_history(Population(honest=24, honest_votes=20, attackers=3, flippers=0, seed=6))
    warm: ConsensusFilter = Pipeline(filter_settings()).consensus
    warm.review(small.state, set(small.state.votes))
    assert warm._coef  # the first search left its fits
    _, fresh = first_search(large)
    assert verdicts(warm.review(large.state, set(large.state.votes))) == verdicts(fresh)


def test_token_shapes_are_those_of_the_former_regex_passes() -> None:
    """``shape`` now translates and collapses in one pass; the features (and so the model) must not change."""
    def former(token: str) -> str:
        for pattern, letter in (("[A-Z]+", "X"), ("[a-z]+", "x"), ("[0-9]+", "d")):
            token = re.sub(pattern, letter, token)
        return token

    rng = random.Random(0)
    tokens = ["Paris", "2.5", "-", "1,000", "dd", "XXx", "xXd9", "Été", "ß_9"]
    tokens += ["".join(rng.choice("aAbXxdD09_-.,éÉßZz") for _ in range(rng.randint(1, 8))) for _ in range(20_000)]
    assert [shape(t) for t in tokens] == [former(t) for t in tokens]
