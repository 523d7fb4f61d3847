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
accepted votes of the unflagged raters, each vote weighing its rater's trust: a thumb is ``up`` with probability
``sigmoid(b_thumbs + w . x)``, a pair picks A with ``sigmoid(b_pairs + w . (x_A - x_B))`` (a
Bradley-Terry model; ``b_pairs`` is a side bias). Ties and both-bad say nothing.

**What an honest rater's disagreement looks like.** Every rater's votes are first predicted by a
model fitted without their fold of raters (``folds`` folds, a rater's fold fixed by a hash of
their id, so every process computes the same): a model with this many features fits the votes
it learnt from far better than new ones. On these out-of-fold predictions a *calibration*
learns how trusted raters vote at each prediction (``Calibration``: a sigmoid of the prediction
with a lapse rate of at least ``min_base_rate``, the slips people make however clear the case):
so a vote gets the chance ``q`` that an honest rater goes against the model there, and the
model's errors count as what they are, honest disagreement. Who is trusted is estimated together
with the model (``_estimate``, learning from crowds: the model fitted on votes weighed by trust,
the trust from a two-group mixture over raters, honest or inverting a share of their votes, on
the model's out-of-fold predictions, in turn until it settles), so a bloc that inverts its votes
does not teach the model its inversion. A vote is *judged* where trusted raters take the model's
side at least ``min_confidence`` of the time: where the model is confident only in name (say, a
thumbs model that has learnt the share of ups and little else) nothing is judged, and a rater
with fewer than ``min_votes`` judged votes gets no verdict.

**The test.** A rater's judged disagreements are tested against those chances: the
likelihood-ratio test (``tail``) against a rater who also inverts ``min_rate`` of their votes,
so a disagreement where honest raters almost never disagree weighs more than one where they
often do. Every rater is tested at every search, so the p-values are Benjamini-Hochberg
adjusted over every rater with ``min_votes`` votes (those with fewer judged votes at a p-value
of 1), and ``max_p_value`` is the false-discovery rate of the verdicts. The out-of-fold tests
screen the raters; a rater half-way to condemnation (``_suspect``) is tested exactly: against a
model fitted without them (leave one rater out, warm-started from the model fitted on everyone)
and a calibration fitted without their votes (their own disagreements must not raise the rate
they are judged against). A rater is flagged ``against_consensus`` when that adjusted p-value
is at most ``max_p_value`` and at least ``min_rate`` of their judged votes go against the
model. The flag is sticky, as for bots and campaigns: a patient attacker's honest-looking votes
are what buy trust for the poisoned ones, so all of them go. The model needs ``min_population``
judged votes from other raters before anyone is tested.

Why (docs/filters.md, "Honest raters flagged under a taste with many ties"): the former test
compared a rater's disagreements with the pooled rate of the three quarters of raters who
disagree least, floored at ``min_base_rate``, one binomial test per rater and search. With ten
or twenty judged votes a rater, the quarter it left out holds the honest raters who slipped
too, so the rate sat below the honest one (4.6 % against 8.4 % in the ``prose`` demo run); a
model confident only in name judged votes honest raters often contradict; and a hundred honest
raters tested at 0.01 at every search lose one now and then. Honest raters were condemned.

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

import dataclasses
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit
from scipy.stats import binom, false_discovery_control
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
    pair: np.ndarray  # True for a pair's vote, False for a thumb


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

    def without(self, raters: set[Rater]) -> Snapshot | None:
        """The snapshot ``ConsensusFilter.prepare`` takes once ``raters`` are flagged: their votes leave the model (it
        learns from unflagged raters only) and they leave the candidates, and so do the answers only they voted on
        (the features' IDF, scaling and size bands are learnt from the answers modelled); None if no candidate is
        left, as ``prepare`` then returns. For a search that runs after another of the same round condemned them
        (``background.Searches``); checked against ``prepare`` by tests/feedback/test_filters_background_campaign.py."""
        if not raters & self.table.keys():
            return self
        table = {rater: rows for rater, rows in self.table.items() if rater not in raters}
        candidates = [rater for rater in self.candidates if rater not in raters]
        if not candidates:
            return None
        ids = {r for rows in table.values() for targets, _ in rows for r in targets}
        return dataclasses.replace(self, table=table, candidates=candidates, answers={r: self.answers[r] for r in ids})


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
    calibration_rounds: int = 30  # EM steps of the trust's mixture at most (it stops when settled)
    trust_rounds: int = 4  # fits of the model and its trust in turn at most (``_estimate``; stops when settled)
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
                     np.array([n for n, _, _ in rows]), raters, merge, pair)

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

    def _fit(self, votes: Votes, rows: np.ndarray, l2: float, start: np.ndarray | None,
             weight: np.ndarray) -> np.ndarray:
        """The coefficients (columns of the design as built) of the logistic model on ``rows`` (a boolean mask) with
        L2 penalty ``l2``, each vote weighing its rater's trust (``weight``, per vote), warm-started from ``start``
        (coefficients of an earlier fit; columns added since at 0)."""
        model = LogisticRegression(C=1 / l2, fit_intercept=False, solver="newton-cg", tol=1e-4,
                                   warm_start=start is not None)
        if start is not None:
            model.coef_ = (votes.merge.T @ np.pad(start, (0, votes.merge.shape[0] - len(start))))[None, :]
        return np.asarray(votes.merge @ model.fit(votes.x[rows], votes.y[rows], sample_weight=weight[rows]).coef_[0])

    @staticmethod
    def _probability(votes: Votes, coef: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """P(positive) of the votes in ``rows``."""
        return np.asarray(expit(votes.x[rows] @ (votes.merge.T @ coef)))

    def _learnable(self, votes: Votes, rows: np.ndarray) -> bool:
        """Enough votes of both directions to fit a model on."""
        return bool(rows.sum() >= self.min_population // 2 and 0 < votes.y[rows].sum() < rows.sum())

    def _grid(self, votes: Votes) -> tuple[float, ...]:
        """The penalties to cross-validate: all of ``l2_grid`` when the votes grew by half since a penalty was last
        chosen (it moves slowly with the amount of data), else only the chosen one."""
        return self.l2_grid if self._chosen is None or len(votes.y) >= 1.5 * self._chosen[1] else (self._chosen[0],)

    def _cross_validate(self, votes: Votes, grid: tuple[float, ...], weight: np.ndarray) -> tuple[float, np.ndarray]:
        """The penalty of ``grid`` with the best out-of-fold log-loss (votes weighing ``weight``), and every vote's
        P(positive) under the model fitted at that penalty without the vote's fold of raters (NaN where no such
        model could be fitted)."""
        fold = np.array([fold_of(r, self.folds) for r in votes.raters])[votes.owner]
        p = np.full((len(grid), len(votes.y)), np.nan)
        for f in range(self.folds):
            held = fold == f
            if not held.any() or not self._learnable(votes, ~held):
                continue
            coef = self._coef.get(f"fold {f}")  # the last fit of this fold
            for g, l2 in enumerate(grid):  # strongest penalty first: each fit warm-starts the next
                coef = self._coef[f"fold {f}"] = self._fit(votes, ~held, l2, coef, weight)
                p[g, held] = self._probability(votes, coef, held)
        predicted = ~np.isnan(p[0]) & (weight > 0)
        if not predicted.any():
            return grid[0], p[0]
        best = int(np.argmin([log_loss(votes.y[predicted], row[predicted], sample_weight=weight[predicted],
                                       labels=[0, 1]) for row in p]))
        return grid[best], p[best]

    def _estimate(self, votes: Votes) -> tuple[float, np.ndarray, Trust]:
        """The consensus model and whom it learns from, estimated together: the penalty, every vote's out-of-fold
        prediction, and those votes with each rater's trust (their probability of being honest).

        Learning from crowds (Raykar et al., JMLR 2010), with raters who never share an item: the model is fitted
        with each vote weighing its rater's trust, and the trust is re-estimated from the new model's out-of-fold
        predictions (``_trust``), until the trust settles (``trust_rounds`` fits at most). Fitted on every vote
        alike, a bloc that inverts its votes teaches the model its inversion: a quarter of the votes, eight
        accounts inverting 80 % of theirs, left a model that ranked honest votes at an AUC of 0.80 but so
        flat that no vote could be judged, and nobody was tested (docs/filters.md, "The sabotage bloc"); weighed
        by trust, the model is the honest raters' again.
        """
        grid = self._grid(votes)
        weight = np.ones(len(votes.raters))
        for _ in range(self.trust_rounds):
            l2, p = self._cross_validate(votes, grid, weight[votes.owner])
            trust = Trust.of(votes, p, weight, self.min_base_rate)  # its weights: the EM's start
            earlier, weight = weight, self._trust(trust)
            if float(np.abs(weight - earlier).max()) < 0.05:
                break
        if len(grid) > 1:
            self._chosen = l2, len(votes.y)
        return l2, p, dataclasses.replace(trust, weight=weight)

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

    def fit(self, snapshot: Snapshot) -> Consensus | None:
        """The consensus model of a snapshot's votes, which a search tests raters against; None if it cannot be
        learnt (too few votes, or all of one direction). Also what ``tests/bench/replay_consensus.py`` compares
        with a run's hidden taste."""
        votes = self._votes(snapshot)
        if not self._learnable(votes, np.ones(len(votes.y), dtype=bool)):
            return None
        with threadpool_limits(self.blas_threads, user_api="blas"):  # as in ``decide``, when a bench calls this alone
            l2, p_oof, trust = self._estimate(votes)
        calibration = trust.calibration()
        return Consensus(votes, l2, p_oof, trust, calibration, self._judged(votes, p_oof, calibration))

    def _decide(self, snapshot: Snapshot) -> list[Flag]:
        consensus = self.fit(snapshot)
        if consensus is None:
            return []
        votes, l2, p_oof, trust, calibration = (consensus.votes, consensus.l2, consensus.p, consensus.trust,
                                                consensus.calibration)
        everyone = np.ones(len(votes.y), dtype=bool)
        trusted = trust.weight[votes.owner]
        # the model fitted on everyone: the warm start of each leave-one-out fit (and of the next search's)
        full = self._coef["full"] = self._fit(votes, everyone, l2, self._coef.get("full"), trusted)
        tests = self._tests(votes, p_oof, calibration)
        judged_oof = np.bincount(votes.owner, weights=consensus.judged, minlength=len(votes.raters))
        index = {rater: n for n, rater in enumerate(votes.raters)}
        exact: dict[int, Test] = {}  # the leave-one-out tests of the suspects
        for rater in snapshot.candidates:
            me = index[rater]
            others = votes.owner != me
            if judged_oof.sum() - judged_oof[me] < self.min_population or not self._learnable(votes, others):
                continue
            if not self._suspect(tests.get(me)):
                continue
            mine = ~others
            p = np.full(len(votes.y), np.nan)
            p[mine] = self._probability(votes, self._fit(votes, others, l2, full, trusted), mine)
            exact[me] = self._tests(votes, p, trust.calibration(without=me)).get(me, Test(0, 0, 0.0, 1.0))
        adjusted = self._adjusted(tests | exact, self._family(votes))
        flags = []
        for me, test in sorted(exact.items()):
            if me in adjusted and adjusted[me] <= self.max_p_value and self._testable(test):
                flags.append(Flag(votes.raters[me], "against_consensus", {
                    "judged_votes": test.judged, "disagreements": test.against,
                    "expected_disagreements": round(test.expected, 3),
                    "population_rate": round(test.expected / test.judged, 4), "p_value": test.p_value,
                    "adjusted_p_value": adjusted[me], "tested_raters": len(adjusted),
                    "population_votes": int(judged_oof.sum() - judged_oof[me]), "l2": l2}))
        return flags

    def screen(self, consensus: Consensus) -> dict[Rater, tuple[Test, float]]:
        """Each rater's out-of-fold test and its adjusted p-value: the screen a search runs before the exact
        (leave-one-out) tests of the suspects; read by ``tests/bench/replay_consensus.py --accounts``."""
        votes = consensus.votes
        tests = self._tests(votes, consensus.p, consensus.calibration)
        adjusted = self._adjusted(tests, self._family(votes))
        return {votes.raters[me]: (test, adjusted.get(me, 1.0)) for me, test in tests.items()}

    def _judged(self, votes: Votes, p: np.ndarray, calibration: Calibration) -> np.ndarray:
        """Votes the model is informative on: trusted raters take its side at least ``min_confidence`` of the time at
        its prediction (calibrated), so a model that looks confident where honest raters often contradict it
        judges nothing there."""
        known = ~np.isnan(p)
        judged = np.zeros(len(p), dtype=bool)
        judged[known] = calibration.chance_against(p[known], votes.pair[known]) <= 1 - self.min_confidence
        return judged

    def _tests(self, votes: Votes, p: np.ndarray, calibration: Calibration) -> dict[int, Test]:
        """Each rater's test on their votes with a prediction ``p``: judged votes, those against the model, how many
        a trusted rater would have had against it on the same votes, and the chance of as much evidence or more."""
        rows = np.flatnonzero(self._judged(votes, p, calibration))
        q = calibration.chance_against(p[rows], votes.pair[rows])
        against = calibration.goes_against(p[rows], votes.pair[rows], votes.y[rows])
        owners = votes.owner[rows]
        tests = {}
        for me in np.unique(owners):
            mine = owners == me
            tests[int(me)] = Test(int(mine.sum()), int(against[mine].sum()), float(q[mine].sum()),
                                  self._p_value(against[mine], q[mine]))
        return tests

    def _p_value(self, against: np.ndarray, q: np.ndarray) -> float:
        """A rater's p-value, given which of their judged votes go ``against`` the model and a trusted rater's chance
        ``q`` of doing so on each: the likelihood-ratio tail against a rater who also inverts ``min_rate`` of them."""
        return tail(against, q, self.min_rate)

    def _trust(self, trust: Trust) -> np.ndarray:
        """Each rater's probability of being honest given the model's out-of-fold predictions (``trust.p``), by EM
        from ``trust.weight``: a two-group mixture over raters, who either vote as the model says (its own
        probability, with slips of at least ``min_base_rate``) or invert a share ``poison`` (``min_rate`` to 1/2:
        attackers, coin flippers) of their votes on top of that.

        Why the model's own probability and not the calibration's (which the test uses): the model is fitted on the
        trusted votes, so it is the honest raters' likelihood; a calibration fitted to everyone's votes learns
        that the model is worthless wherever a bloc inverts it, and from there nobody can be told from anybody
        (everyone trusted, nothing judged: a fixed point of the EM). Why a mixture rather than dropping the
        raters who disagree most, as the former pooled rate did: leaving out a quarter leaves out the honest raters
        who slipped too, which set the rate at about half the honest one and condemned honest raters
        (docs/filters.md, "Honest raters flagged under a taste with many ties"). The consensus is only a consensus
        with an honest majority, so the first group's share is kept at 1/2 or more.
        """
        owner, pk, y = trust.owner, trust.p, trust.y
        raters = len(trust.weight)
        q = np.maximum(np.minimum(pk, 1 - pk), self.min_base_rate)
        against = (pk >= 0.5) != (y >= 0.5)
        honest = np.bincount(owner, log_likelihood(against, q, 0.0), minlength=raters)
        voted = np.bincount(owner, minlength=raters) > 0
        weight, most = trust.weight, 1 - 1 / (raters + 1)
        if not voted.any():  # no vote has an out-of-fold prediction yet: nothing to learn trust from
            return weight
        share = min(max(float(weight[voted].mean()), 0.5), most)
        for _ in range(self.calibration_rounds):
            doubt = 1 - weight[owner]
            poison = 0.5 if not doubt.any() else float(minimize_scalar(
                lambda x, doubt=doubt: -float(doubt @ log_likelihood(against, q, x)), bounds=(self.min_rate, 0.5),
                method="bounded").x)
            inverting = np.bincount(owner, log_likelihood(against, q, poison), minlength=raters)
            earlier, weight = weight, expit(math.log(share / (1 - share)) + honest - inverting)
            share = min(max(float(weight[voted].mean()), 0.5), most)
            if float(np.abs(weight - earlier).max()) < 1e-3:
                break
        return weight

    def _family(self, votes: Votes) -> int:
        """The raters a search's adjustment counts: those with ``min_votes`` modelled votes (``_adjusted``)."""
        return int((np.bincount(votes.owner, minlength=len(votes.raters)) >= self.min_votes).sum())

    def _adjusted(self, tests: dict[int, Test], raters: int) -> dict[int, float]:
        """Benjamini-Hochberg adjusted p-values of the raters with ``min_votes`` judged votes, among ``raters``
        hypotheses: every rater with ``min_votes`` modelled votes, those the model judges too few of counting at a
        p-value of 1 (no evidence against them).

        Why adjusted: every rater is tested at every search, and at a per-rater level a population of a hundred
        honest raters loses one now and then; adjusted, at most ``max_p_value`` of a search's verdicts are honest
        raters (in expectation), however many raters there are. Why the raters the model cannot judge count: the
        family would otherwise shrink exactly where the model is least informative (a taste under which most
        pairs tie, a young history), down to a lone rater tested at the full level.
        """
        eligible = sorted(me for me, test in tests.items() if test.judged >= self.min_votes)
        if not eligible:
            return {}
        unjudged = [1.0] * max(0, raters - len(eligible))
        values = false_discovery_control([tests[me].p_value for me in eligible] + unjudged)
        return {me: float(values[n]) for n, me in enumerate(eligible)}

    def _testable(self, test: Test) -> bool:
        """Enough judged votes, and a share against the model that is an attack rather than a taste."""
        return test.judged >= self.min_votes and test.against >= self.min_rate * test.judged

    def _suspect(self, test: Test | None) -> bool:
        """The screen, on the rater's out-of-fold test: only a rater half-way to condemnation there (half of
        ``min_rate``, a tail of the square root of ``max_p_value``) gets the leave-one-out fit, which differs from
        the out-of-fold model by a fold of other raters only."""
        if test is None or test.against < self.min_rate / 2 * max(1, test.judged):
            return False
        return test.p_value <= math.sqrt(self.max_p_value)

    def condemns(self, judged: int, against: int, population_rate: float) -> float | None:
        """The binomial tail of ``against`` disagreements in ``judged`` votes if they would condemn a rater tested
        alone with every judged vote at ``population_rate`` (``tests/bench/consensus_power.py``), else None.

        ``min_votes`` and ``min_rate`` guard both ends: too few votes to judge, and a long history
        whose small excess over the population rate is significant yet no attack.
        """
        test = Test(judged, against, judged * population_rate, float(binom.sf(against - 1, judged, population_rate)))
        return test.p_value if self._testable(test) and test.p_value <= self.max_p_value else None


@dataclass(frozen=True)
class Consensus:
    """A search's model of the crowd: the votes, the penalty chosen, every vote's out-of-fold P(positive) (NaN where
    none could be fitted), whom it trusts, how trusted raters vote at each prediction, and the votes it judges."""

    votes: Votes
    l2: float
    p: np.ndarray
    trust: Trust
    calibration: Calibration
    judged: np.ndarray


@dataclass(frozen=True)
class Test:
    """One rater against the consensus: judged votes, disagreements, the disagreements expected of a trusted rater on
    the same votes, and the tail probability of as many or more."""

    judged: int
    against: int
    expected: float
    p_value: float


def log_likelihood(against: np.ndarray, q: np.ndarray, poison: float) -> np.ndarray:
    """Each vote's log-probability of going ``against`` the model or not, for a rater who disagrees with probability
    ``q`` and inverts a share ``poison`` of their votes besides (0: an honest rater)."""
    inverted = q * (1 - poison) + (1 - q) * poison
    return np.where(against, np.log(inverted), np.log1p(-inverted))


def tail(against: np.ndarray, q: np.ndarray, poison: float, bins: int = 4096) -> float:
    """The p-value of a rater's disagreements ``against`` the model, each vote's chance being ``q`` for a trusted
    rater: the likelihood-ratio test against a rater who also inverts a share ``poison`` of their votes.

    Why not count them: a disagreement where trusted raters almost never disagree (``q`` near the floor) is far
    stronger evidence than one where they often do, and the count treats both alike. The likelihood ratio weighs
    each disagreement by ``logit(q + poison (1 - 2q)) - logit(q)`` (Neyman-Pearson: the most powerful test against
    that alternative; ``poison`` is ``min_rate``, the least share an attack inverts). The weights are rounded to
    a lattice of about ``bins`` steps for the whole history, and the tail of that weighted sum is computed
    exactly under the null: a valid p-value for the rounded weights, whose loss of power is negligible.
    """
    inverted = q + poison * (1 - 2 * q)
    weight = np.log(inverted / (1 - inverted)) - np.log(q / (1 - q))
    step = max(float(weight.sum()) / bins, 1e-12)
    units = np.maximum(1, np.round(weight / step)).astype(np.int64)
    observed = int(units[against].sum())
    if observed <= 0:
        return 1.0
    if observed <= units @ q:  # at or under the null's mean: no evidence (the tail is large; BH ignores it)
        return 1.0
    dist = np.zeros(int(units.sum()) + 1)
    dist[0], top = 1.0, 0
    for unit, chance in zip(units, q, strict=True):
        moved = dist[: top + 1] * chance  # the vote goes against the model: its weight is added
        dist[: top + 1] *= 1 - chance
        dist[unit: unit + top + 1] += moved
        top += unit
    return float(min(1.0, dist[observed:].sum()))


@dataclass(frozen=True)
class Trust:
    """The out-of-fold votes the calibration is fitted on (predictions, kinds, labels, whose) and each rater's weight
    in it: their probability of being honest (``ConsensusFilter._trust``)."""

    p: np.ndarray
    pair: np.ndarray
    y: np.ndarray
    owner: np.ndarray
    weight: np.ndarray  # per rater
    floor: float

    @classmethod
    def of(cls, votes: Votes, p: np.ndarray, weight: np.ndarray, floor: float) -> Trust:
        """The votes with an out-of-fold prediction ``p``, each rater weighing ``weight``."""
        known = ~np.isnan(p)
        return cls(p[known], votes.pair[known], votes.y[known], votes.owner[known], weight, floor)

    def calibration(self, without: int | None = None) -> Calibration:
        """The calibration on the trusted votes; ``without`` a rater's own votes for the exact test of that rater:
        their disagreements must not raise the rate they are judged against (an attacker trusted for lack of
        evidence would otherwise mask itself)."""
        weight = self.weight[self.owner]
        if without is not None:
            weight = weight * (self.owner != without)
        return Calibration.fit(self.p, self.pair, self.y, self.floor, weight)


@dataclass(frozen=True)
class Calibration:
    """What a trusted rater votes, given the model's prediction ``p``: a psychometric function with a lapse rate.

    ``P(positive) = lapse + (1 - 2 lapse) * sigmoid(a_kind + b_kind * logit(p))``, one intercept and slope for thumbs
    and one for pairs (a thumb's prediction may rest on the share of ups alone, a pair's on a real difference
    between the answers), and one ``lapse``: the share of votes a person casts against their own taste however
    clear the case (slips), at least ``min_base_rate``. Plain Platt scaling (no lapse) has to bend one sigmoid
    both to the model's errors near 1/2 and to the slips at high confidence, and on the synthetic histories it
    expected 1.5 to 2 times the honest raters' disagreements on the votes it judged: a test against it is blind
    to attackers. The model's side of a vote is the calibrated one; a trusted rater goes against it with the
    calibrated probability of the other side. The fit is maximum likelihood with the L2 penalty of the other
    logistic fits here on ``a`` and ``b``, which pulls a kind with few votes towards 1/2 (no information:
    nothing judged) rather than towards confidence.
    """

    coef: np.ndarray  # a_thumbs, a_pairs, b_thumbs, b_pairs
    lapse: float

    @classmethod
    def fit(cls, p: np.ndarray, pair: np.ndarray, y: np.ndarray, floor: float, weight: np.ndarray) -> Calibration:
        """Fitted to votes with predictions ``p``, labels ``y`` and weights ``weight``; the lapse at least ``floor``."""
        if len(set(y[weight > 0])) < 2:  # one label only, or no votes: no information
            return cls(np.zeros(4), floor)
        x = cls._design(p, pair)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            """The penalised negative log-likelihood and its gradient."""
            coef, lapse = theta[:4], theta[4]
            f = expit(x @ coef)
            positive = np.clip(lapse + (1 - 2 * lapse) * f, 1e-12, 1 - 1e-12)
            dll = weight * (y / positive - (1 - y) / (1 - positive))  # d log-likelihood / d positive
            value = weight @ (y * np.log(positive) + (1 - y) * np.log1p(-positive)) - 0.5 * coef @ coef
            gradient = np.append(x.T @ (dll * (1 - 2 * lapse) * f * (1 - f)) - coef, dll @ (1 - 2 * f))
            return -float(value), -gradient

        start = np.array([0.0, 0.0, 1.0, 1.0, floor])
        theta = minimize(objective, start, jac=True, method="L-BFGS-B",
                         bounds=[(None, None)] * 4 + [(floor, 0.49)]).x
        return cls(theta[:4], float(theta[4]))

    @staticmethod
    def _design(p: np.ndarray, pair: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-9, 1 - 1e-9)
        z = np.log(p / (1 - p))
        thumbs = (~pair).astype(float)
        return np.column_stack([thumbs, 1 - thumbs, thumbs * z, (1 - thumbs) * z])

    def positive(self, p: np.ndarray, pair: np.ndarray) -> np.ndarray:
        """P(a trusted rater's vote is positive: up, or A), per vote."""
        return np.asarray(self.lapse + (1 - 2 * self.lapse) * expit(self._design(p, pair) @ self.coef))

    def chance_against(self, p: np.ndarray, pair: np.ndarray) -> np.ndarray:
        """P(a trusted rater's vote goes against the model's side), per vote: at least the lapse."""
        positive = self.positive(p, pair)
        return np.minimum(positive, 1 - positive)

    def goes_against(self, p: np.ndarray, pair: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether each vote ``y`` goes against the model's side."""
        return (self.positive(p, pair) >= 0.5) != (y >= 0.5)
