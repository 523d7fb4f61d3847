"""Raters who vote against the crowd's taste: a consensus model of what the other raters prefer.

Reliability (Dawid-Skene) needs several raters on one item; when every user votes only on
the answers they were served, items are never shared and a rater who mixes honest-looking
votes with votes against the majority's taste (a slow attacker) goes unseen. What raters
share is their *taste*, so the filter learns it from their votes instead of from items.

Nobody tells the filter the preference, and nothing in it is chosen to match one: every
(prompt, answer) is described by a generic text representation (``text_features.py``: hashed
words, bigrams, token shapes and line starts of the answer, its size, and how much it speaks
to the prompt) plus, once the trainer has published scores, the current reward model's score
(``reward_scores``). One logistic model (scikit-learn, L2) learns a score ``w . x`` from the
accepted votes of the unflagged raters: a thumb is ``up`` with probability
``sigmoid(b_thumbs + w . x)``, a pair picks A with ``sigmoid(b_pairs + w . (x_A - x_B))`` (a
Bradley-Terry model; ``b_pairs`` is a side bias). Ties and both-bad say nothing.

Each rater under test is compared with a model fitted **without them** (leave one rater out,
warm-started from the model fitted on everyone): their directional votes on which the model
is confident (probability at least ``min_confidence`` for one side) are judged. The
population's disagreement ``p0`` is measured out of sample, with every rater's votes predicted
by a model fitted without their fold of raters (``folds`` folds, a rater's fold fixed by a hash
of their id, so every process computes the same): a model with this many features fits the
votes it learnt from far better than new ones, and an in-sample ``p0`` would make every honest
rater's out-of-sample slips look improbable. ``p0`` is pooled over the three quarters of the
raters with ``min_votes // 2`` judged votes who agree most (so coin flippers and attackers do
not inflate it), floored at ``min_base_rate``. The same out-of-fold predictions screen the
raters: one who disagrees on less than half of ``min_rate`` of their judged votes is spared
the leave-one-out fit.

A rater with ``min_votes`` judged votes of which ``k`` disagree is flagged ``against_consensus``
when ``k / n >= min_rate`` and the binomial tail ``P(X >= k | n, p0) <= max_p_value``
(``tests/bench/consensus_power.py`` prints how often that catches an attacker and condemns an
honest rater, by history length). The flag is sticky, as for bots and campaigns: a patient
attacker's honest-looking votes are what buy trust for the poisoned ones, so all of them go.
The model needs ``min_population`` judged votes from other raters before anyone is tested.

**Cost** (docs/filters.md, "The search cost"). The fits dominate a search. Two things keep them
cheap without changing the problem solved: the design is compressed (``merged_columns``: columns
that are multiples of one another, above all the many terms that occur in one voted answer
only, are fitted as one column, an exact reparametrisation of the L2-penalised model), and the
fits run with one BLAS thread (their vector operations are too small to gain from a second
thread, and on a loaded 2-core machine a thread waiting for a busy core made them ten times
slower).

A coin flipper (no malice, no taste) disagrees about half the time and is flagged too: their
votes carry no signal for training, so losing them costs nothing.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from feedback.filters.base import Answer, FilterState, Flag, Rater, Vote
from feedback.filters.reliability import RewardJudge, RewardScores
from feedback.filters.settings import FilterSettings
from feedback.filters.text_features import TextFeatures

POSITIVE = {"up": True, "a": True, "down": False, "b": False}
_BIAS_SCALE = 10.0  # the two bias columns' value: their L2 penalty is then 1/100 of a feature's


@dataclass(frozen=True)
class Votes:
    """The modelled votes: design rows (compressed), labels, and the index of each row's rater.

    ``x`` is the design ``X`` times ``merge`` (``merged_columns``); coefficients outside the fits
    live in the columns of ``X`` (``w = merge @ u``), so warm starts carry over from one search to
    the next whatever the grouping.
    """

    x: sp.csr_matrix
    y: np.ndarray
    owner: np.ndarray
    raters: list[Rater]
    merge: sp.csr_matrix


def merged_columns(x: sp.spmatrix) -> sp.csr_matrix:
    """``M`` with orthonormal columns such that ``x @ M`` keeps one column per group of proportional columns of ``x``.

    Why it is exact: with an L2 penalty and a loss that sees only ``x . w``, columns ``c_j v`` (one
    vector ``v``, factors ``c_j``) always get weights ``w_j = c_j u / s`` at the optimum, ``s`` the
    norm of the ``c``: their sum ``v (s u)`` and penalty ``u^2`` are those of one column ``s v`` with
    weight ``u``. Column ``k`` of ``x @ M`` is that ``s v``, and ``w = M u``. Proportional on all
    votes means proportional on any subset of them, so one grouping serves every fold and
    leave-one-out fit. Terms found in one voted answer only are proportional (one nonzero, the
    same row): they become one column per vote. Empty columns get no group (weight 0, as at the
    optimum). Ratios are compared to 12 significant digits.
    """
    csc = sp.csc_matrix(x)
    csc.sort_indices()
    counts = np.diff(csc.indptr)
    used = np.flatnonzero(counts)
    first = csc.data[csc.indptr[used]]  # each used column's first nonzero: its factor c_j
    ratios = np.round(csc.data / np.repeat(first, counts[used]), 12) + 0.0  # + 0.0: no -0.0 in the keys
    groups: dict[tuple[bytes, bytes], int] = {}
    labels = np.fromiter((groups.setdefault((csc.indices[a:b].tobytes(), ratios[a:b].tobytes()), len(groups))
                          for a, b in zip(csc.indptr[used], csc.indptr[used + 1], strict=True)),
                         dtype=np.int64, count=len(used))
    norms = np.sqrt(np.bincount(labels, weights=first**2, minlength=len(groups)))
    return sp.csr_matrix((first / norms[labels], (used, labels)), shape=(x.shape[1], len(groups)))


Table = dict[Rater, list[tuple[tuple[str, ...], float]]]
"""Each rater's modelled votes: (the response ids compared, 1.0 if positive)."""


@dataclass(frozen=True)
class Snapshot:
    """What a search reads of the filter state, copied out so the search can run beside the stream (the pipeline
    runs it in a thread while later batches change the state)."""

    table: Table
    candidates: list[Rater]
    answers: dict[str, Answer]
    judge: RewardJudge | None


def fold_of(rater: Rater, folds: int) -> int:
    """A rater's cross-validation fold: a stable hash, the same in every process."""
    return zlib.crc32(f"{rater[0]}:{rater[1]}".encode()) % folds


@dataclass(kw_only=True)
class ConsensusFilter:
    min_votes: int
    min_population: int
    min_confidence: float
    min_base_rate: float
    min_rate: float
    max_p_value: float
    reward_scores: RewardScores | None = None
    folds: int = 5
    l2_grid: tuple[float, ...] = (3.0, 1.0, 0.3, 0.1)
    compress: bool = True  # False: fit the design as built, the reference tests and benchmarks compare with
    blas_threads: int | None = 1  # None: the BLAS library's default
    name: str = "consensus"
    reasons: tuple[str, ...] = ("against_consensus",)
    _text: TextFeatures = field(default_factory=TextFeatures)
    _chosen: tuple[float, int] | None = None  # the penalty cross-validation chose, and on how many votes
    _columns: dict[int, int] = field(default_factory=dict)  # hashed column -> position in the fitted design
    _coef: dict[str, np.ndarray] = field(default_factory=dict)  # the last search's fits: full, and per fold

    @classmethod
    def from_settings(cls, settings: FilterSettings, *, reward_scores: RewardScores | None = None) -> ConsensusFilter:
        """``reward_scores``: the trainer's reward-model scores, one more column of the consensus model."""
        s = settings
        return cls(min_votes=s.consensus_min_votes, min_population=s.consensus_min_population,
                   min_confidence=s.consensus_min_confidence, min_base_rate=s.consensus_min_base_rate,
                   min_rate=s.consensus_min_rate, max_p_value=s.consensus_max_p_value, reward_scores=reward_scores)

    def _targets(self, state: FilterState, vote: Vote) -> tuple[str, ...] | None:
        """The response ids a directional vote compares (one thumb, or A then B), else None."""
        if vote.label not in POSITIVE:
            return None
        answers = state.answers_of(vote)
        if (vote.kind == "thumbs" and len(answers) == 1) or (vote.kind == "pairwise" and len(answers) == 2):
            return tuple(a.response_id for a in answers)
        return None

    def _table(self, state: FilterState) -> Table:
        """Each unflagged rater's accepted directional votes (the first per target): (response ids, 1.0 if positive)."""
        table: dict[Rater, list[tuple[tuple[str, ...], float]]] = {}
        for rater, votes in sorted(state.votes.items()):
            if state.flags.get(rater):
                continue
            rows = []
            for vote in votes:
                if vote.key in state.accepted and state.first_vote.get((rater, vote.target)) == vote.event_id:
                    targets = self._targets(state, vote)
                    if targets is not None:
                        rows.append((targets, float(POSITIVE[vote.label])))
            if rows:
                table[rater] = rows
        return table

    def _votes(self, snapshot: Snapshot) -> Votes:
        """The design matrix: [thumbs bias, pair bias, features] with a pair's features the A - B difference."""
        table = snapshot.table
        ids = sorted(snapshot.answers)
        index = {r: n for n, r in enumerate(ids)}
        answers = [snapshot.answers[r] for r in ids]
        features = self._text.matrix([a.prompt for a in answers], [a.text for a in answers])
        features = sp.hstack([features, self._reward_column(snapshot.judge, ids)], format="csr")
        raters = list(table)
        rows = [(n, targets, y) for n, rater in enumerate(raters) for targets, y in table[rater]]
        first = np.array([index[t[0]] for _, t, _ in rows])
        pair = np.array([len(t) == 2 for _, t, _ in rows])
        second = np.array([index[t[-1]] for _, t, _ in rows])
        x = features[first] - sp.diags(pair.astype(float)) @ features[second]
        # Hashing spreads terms over 2^18 columns: fit only those ever used, in the order first used, so the
        # coefficients of the last search (``_coef``) warm-start this one's fits.
        for column in np.flatnonzero(x.getnnz(axis=0)):
            self._columns.setdefault(int(column), len(self._columns))
        x = x[:, np.fromiter(self._columns, dtype=np.int64, count=len(self._columns))]
        bias = sp.csr_matrix(np.column_stack([~pair, pair]).astype(float) * _BIAS_SCALE)
        design = sp.hstack([bias, x], format="csr")
        merge = merged_columns(design) if self.compress else sp.identity(design.shape[1], format="csr")
        return Votes(sp.csr_matrix(design @ merge), np.array([y for _, _, y in rows]),
                     np.array([n for n, _, _ in rows]), raters, merge)

    @staticmethod
    def _reward_column(judge: RewardJudge | None, ids: list[str]) -> sp.csr_matrix:
        """The reward model's standardised score of each answer; 0 (no information) for answers it did not score."""
        column = np.zeros((len(ids), 1))
        if judge is not None and judge.scores:
            values = np.array(list(judge.scores.values()))
            scale = float(values.std()) or 1.0
            for n, response_id in enumerate(ids):
                score = judge.scores.get(response_id)
                if score is not None:
                    column[n, 0] = (score - judge.median) / scale
        return sp.csr_matrix(column)

    def _fit(self, votes: Votes, rows: np.ndarray, l2: float, start: np.ndarray | None = None) -> np.ndarray:
        """The coefficients (columns of the design as built) of the logistic model on ``rows`` (a boolean mask) with
        L2 penalty ``l2``, warm-started from ``start`` (coefficients of an earlier fit; columns added since at 0)."""
        model = LogisticRegression(C=1 / l2, fit_intercept=False, solver="newton-cg", tol=1e-4,
                                   warm_start=start is not None)
        if start is not None:
            model.coef_ = (votes.merge.T @ np.pad(start, (0, votes.merge.shape[0] - len(start))))[None, :]
        return np.asarray(votes.merge @ model.fit(votes.x[rows], votes.y[rows]).coef_[0])

    @staticmethod
    def _probability(votes: Votes, coef: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """P(positive) of the votes in ``rows``."""
        return np.asarray(expit(votes.x[rows] @ (votes.merge.T @ coef)))

    def _judge(self, votes: Votes, p: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per rater: votes among ``rows`` the probabilities ``p`` judge (confident), and those against them."""
        sure = rows & (np.maximum(p, 1 - p) >= self.min_confidence)
        against = sure & ((p >= 0.5) != (votes.y >= 0.5))
        n = len(votes.raters)
        return (np.bincount(votes.owner, weights=sure, minlength=n).astype(int),
                np.bincount(votes.owner, weights=against, minlength=n).astype(int))

    def _learnable(self, votes: Votes, rows: np.ndarray) -> bool:
        """Enough votes of both directions to fit a model on."""
        return bool(rows.sum() >= self.min_population // 2 and 0 < votes.y[rows].sum() < rows.sum())

    def _cross_validate(self, votes: Votes) -> tuple[float, np.ndarray, np.ndarray]:
        """The penalty of ``l2_grid`` with the best out-of-fold log-loss, and each rater's judged votes and
        disagreements under the model fitted at that penalty without their fold of raters.

        The penalty is chosen again only when the votes grew by half since it was last chosen (it moves slowly
        with the amount of data); in between, only the chosen one is fitted.
        """
        grid = self.l2_grid if self._chosen is None or len(votes.y) >= 1.5 * self._chosen[1] else (self._chosen[0],)
        fold = np.array([fold_of(r, self.folds) for r in votes.raters])[votes.owner]
        p = np.full((len(grid), len(votes.y)), np.nan)
        for f in range(self.folds):
            held = fold == f
            if not held.any() or not self._learnable(votes, ~held):
                continue
            coef = self._coef.get(f"fold {f}")  # the last search's fit of this fold
            for g, l2 in enumerate(grid):  # strongest penalty first: each fit warm-starts the next
                coef = self._coef[f"fold {f}"] = self._fit(votes, ~held, l2, coef)
                p[g, held] = self._probability(votes, coef, held)
        predicted = ~np.isnan(p[0])
        if not predicted.any():
            return grid[0], *self._judge(votes, np.full(len(votes.y), 0.5), predicted)
        best = int(np.argmin([log_loss(votes.y[predicted], row[predicted], labels=[0, 1]) for row in p]))
        if len(grid) > 1:
            self._chosen = grid[best], len(votes.y)
        return grid[best], *self._judge(votes, np.nan_to_num(p[best], nan=0.5), predicted)

    def review(self, state: FilterState, raters: set[Rater]) -> list[Flag]:
        """Test ``raters`` with ``min_votes`` or more votes against a model fitted without them."""
        snapshot = self.prepare(state, raters)
        return [] if snapshot is None else self.decide(snapshot)

    def prepare(self, state: FilterState, raters: set[Rater]) -> Snapshot | None:
        """The part of a search that reads the state (cheap): the modelled votes, the raters to test among
        ``raters``, the answers voted on and the reward model's scores. None if nobody is to be tested."""
        table = self._table(state)
        candidates = [r for r in sorted(raters) if len(table.get(r, ())) >= self.min_votes]
        if not candidates:
            return None
        ids = {r for rows in table.values() for targets, _ in rows for r in targets}
        judge = self.reward_scores() if self.reward_scores is not None else None
        return Snapshot(table, candidates, {r: state.answers[r] for r in ids}, judge)

    def decide(self, snapshot: Snapshot) -> list[Flag]:
        """The costly part of a search, on a snapshot only: safe to run in another thread than the state's (one
        search at a time: the fits of one warm-start the next)."""
        with threadpool_limits(self.blas_threads, user_api="blas"):
            return self._decide(snapshot)

    def _decide(self, snapshot: Snapshot) -> list[Flag]:
        candidates = snapshot.candidates
        votes = self._votes(snapshot)
        everyone = np.ones(len(votes.y), dtype=bool)
        if not self._learnable(votes, everyone):
            return []
        l2, judged_oof, against_oof = self._cross_validate(votes)
        # the model fitted on everyone: the warm start of each leave-one-out fit (and of the next search's)
        full = self._coef["full"] = self._fit(votes, everyone, l2, self._coef.get("full"))
        index = {rater: n for n, rater in enumerate(votes.raters)}
        flags = []
        for rater in candidates:
            me = index[rater]
            others = votes.owner != me
            population = [(int(judged_oof[o]), int(against_oof[o])) for o in range(len(votes.raters)) if o != me]
            population_votes = sum(j for j, _ in population)
            if population_votes < self.min_population or not self._learnable(votes, others):
                continue
            base = max(self.min_base_rate, self.population_rate(population))
            if not self._suspect(int(judged_oof[me]), int(against_oof[me]), base):
                continue
            mine = ~others
            p = np.full(len(votes.y), 0.5)
            p[mine] = self._probability(votes, self._fit(votes, others, l2, full), mine)
            judged, against = self._judge(votes, p, mine)
            n, k = int(judged[me]), int(against[me])
            p_value = self.condemns(n, k, base)
            if p_value is not None:
                flags.append(Flag(rater, "against_consensus", {
                    "judged_votes": n, "disagreements": k, "population_rate": round(base, 4),
                    "p_value": p_value, "population_votes": population_votes, "l2": l2}))
        return flags

    def _suspect(self, judged: int, against: int, population_rate: float) -> bool:
        """The screen, on the rater's out-of-fold votes: only a rater half-way to condemnation there (half of
        ``min_rate``, the square root of ``max_p_value``) gets the leave-one-out fit, which differs from the
        out-of-fold model by a fold of other raters only."""
        if against < self.min_rate / 2 * max(1, judged):
            return False
        return float(binom.sf(against - 1, judged, population_rate)) <= math.sqrt(self.max_p_value)

    def condemns(self, judged: int, against: int, population_rate: float) -> float | None:
        """The binomial tail of ``against`` disagreements in ``judged`` votes if they condemn the rater, else None.

        ``min_votes`` and ``min_rate`` guard both ends: too few votes to judge, and a long history
        whose small excess over the population rate is significant yet no attack.
        """
        if judged < self.min_votes or against < self.min_rate * judged:
            return None
        p_value = float(binom.sf(against - 1, judged, population_rate))
        return p_value if p_value <= self.max_p_value else None

    def population_rate(self, judged: list[tuple[int, int]]) -> float:
        """Disagreement of the other raters, pooled over the three quarters who agree most (coin flippers out)."""
        ranked = sorted((k / n, n, k) for n, k in judged if n >= self.min_votes // 2)
        kept = ranked[: max(1, math.ceil(0.75 * len(ranked)))] if ranked else []
        votes = sum(n for _, n, _ in kept)
        return sum(k for _, _, k in kept) / votes if votes else 0.0
