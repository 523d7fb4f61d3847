"""How well the consensus model knows a run's hidden taste, and whom one search over the run's history flags.

    .venv/bin/python -m tests.bench.replay_consensus OUT/NAME [OUT/NAME ...] [--l2-grid 3,1,0.3,0.1]
        [--embeddings] [--time-scale 0.1]

Why: the consensus filter tests each rater against a model of what the crowd prefers, learnt from
the crowd's votes; every error of that model is a disagreement an honest rater is expected to
have, so the model's accuracy bounds the test's power (docs/filters.md, section 11). This replays
a ``measure_filters`` run offline: the worker's state rebuilt from the run's database, the
consensus flags cleared (the votes the consensus alone quarantined count as accepted again), and
one search over every rater, as the worker's first search after a restart would run it. Printed
per run: the votes modelled, the penalty cross-validation chose, the AUC of the out-of-fold
predictions against the taste's own verdicts (the truth file's ``preferred``: what no filter
sees), beside it the AUC of the same model taught by the taste itself (its side of every honest
vote, no slip or attacker among the labels: what the representation learns from this many votes),
the votes the model judges and the share of them where it
takes the taste's side, the honest accounts' share of judged votes against the model seen and expected by the
calibration (an expected share above the seen one blunts the test), and the accounts flagged per user type.

Two variations of the model, to measure before changing the filter: ``--l2-grid`` the penalties
cross-validation chooses from (default: the filter's), and ``--embeddings`` adds to each answer's
representation the mean-pooled MiniLM sentence embedding of the answer (the reward model's
backbone before training: no preference learnt), its element-wise product with the prompt's, and
their cosine. The worker never imports torch; this bench does.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from rich.table import Table
from sklearn.metrics import roc_auc_score
from sqlalchemy import select

from feedback.db.models import Quarantine
from feedback.filters import FilterSettings, Pipeline
from feedback.filters.base import FilterState, Rater
from feedback.filters.consensus import POSITIVE, ConsensusFilter, Snapshot, Test
from feedback.filters.reliability import RewardJudge
from feedback.filters.text_features import TextFeatures
from flywheel.cli.common import console
from flywheel.simulation.truth import TruthRecord, read_truth
from tests.bench import run_folder

SHOWN_P = 0.05  # --accounts: honest accounts whose out-of-fold p-value is at most this are shown beside the attackers


class WithEmbeddings(TextFeatures):
    """The filter's representation plus MiniLM sentence embeddings of the answer and of how it meets the prompt."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from trainer.reward import default_backbone
        folder = default_backbone()
        self._tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self._encoder: Any = AutoModel.from_pretrained(folder).eval()
        self._embedded: dict[str, np.ndarray] = {}

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings (sentence-transformers' pooling for this model), cached per text."""
        import torch
        missing = [t for t in dict.fromkeys(texts) if t not in self._embedded]
        for start in range(0, len(missing), 32):
            chunk = missing[start:start + 32]
            batch = self._tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = self._encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
            self._embedded.update(zip(chunk, pooled, strict=True))
        return np.array([self._embedded[t] for t in texts])

    def matrix(self, prompts: Sequence[str], answers: Sequence[str]) -> sp.csr_matrix:
        answer, prompt = self._embed(answers), self._embed(prompts)
        meets = answer * prompt * np.sqrt(answer.shape[1])  # the cosine's terms, at the scale of one coordinate
        cosine = (answer * prompt).sum(axis=1, keepdims=True)
        return sp.hstack([super().matrix(prompts, answers), sp.csr_matrix(np.hstack([answer, meets, cosine]))],
                         format="csr")


@dataclasses.dataclass(frozen=True)
class Account:
    """One account's out-of-fold test on the whole history (a search's screen), and whether the searches flagged it."""

    user_type: str
    user: str
    modelled: int
    test: Test
    adjusted: float
    trust: float
    flagged: bool


@dataclasses.dataclass(frozen=True)
class Replay:
    """One run's search: the model against the taste, and the accounts flagged per user type."""

    run: str
    votes: int
    l2: float
    auc: float
    taught: float  # the AUC of the same model taught by the taste itself on the honest votes
    judged: int
    agree: float
    flagged: Counter[str]
    accounts: Counter[str]
    evidence: list[Account]  # the accounts of ``--accounts``
    honest: tuple[int, int, float]  # the honest accounts' judged votes, those against the model, and the expected

    @property
    def honest_rates(self) -> str:
        """The honest accounts' disagreement on judged votes, observed / expected by the calibration: where the
        expected one is the higher, the test asks more of attackers than honest raters' own rate would."""
        judged, against, expected = self.honest
        return f"{against / judged:.1%} / {expected / judged:.1%}" if judged else "n/a"


def searched(state: FilterState, consensus: ConsensusFilter, searches: int) -> set[Rater]:
    """The raters ``searches`` searches flag as the history grows, each after an equal share of the votes: flags stick
    (a flagged rater leaves the model and the later searches), and each search warm-starts from the last, as in the
    worker. The other filters' flags hold from the start (their raters never enter the model)."""
    times = sorted(vote.at for votes in state.votes.values() for vote in votes)
    flagged: set[Rater] = set()
    for k in range(1, searches + 1):
        cutoff = times[len(times) * k // searches - 1]
        flags = defaultdict(dict, state.flags) | {rater: {consensus.reasons[0]: {}} for rater in flagged}
        view = dataclasses.replace(state, flags=flags, votes={
            rater: [vote for vote in votes if vote.at <= cutoff] for rater, votes in state.votes.items()})
        snapshot = consensus.prepare(view, set(view.votes) - flagged)
        if snapshot is not None:
            flagged |= {flag.rater for flag in consensus.decide(snapshot)}
    return flagged


def without_consensus(folder: Path, settings: FilterSettings) -> Pipeline:
    """The worker's pipeline rebuilt from a run's database as if the consensus had flagged nobody: its flags go, and
    the votes it alone quarantined count as accepted."""
    with run_folder.sessions(folder)() as session:
        pipeline = Pipeline.rebuild(session, settings)
        consensus_only = [(app, event) for app, event, reasons in
                          session.execute(select(Quarantine.app_id, Quarantine.event_id, Quarantine.reasons))
                          if set(reasons) <= set(pipeline.consensus.reasons)]
    pipeline.state.accepted.update(consensus_only)
    for reasons in pipeline.state.flags.values():
        for reason in pipeline.consensus.reasons:
            reasons.pop(reason, None)
    return pipeline


def modelled(folder: Path, settings: FilterSettings) -> Snapshot:
    """What the consensus models of a run's whole history, its own flags cleared (``without_consensus``)."""
    pipeline = without_consensus(folder, settings)
    snapshot = pipeline.consensus.prepare(pipeline.state, set(pipeline.state.votes))
    if snapshot is None:
        raise ValueError(f"{folder}: too few votes for a consensus model")
    return snapshot


Sides = dict[tuple[str, str], bool | None]
"""The taste's side of each vote's target, by (user, target id): True for up or A; None for a tie, which has no side."""


def taste_sides(folder: Path, records: list[TruthRecord]) -> Sides:
    """The taste's side of every vote of a run's truth file (its ``preferred``: what no filter sees)."""
    if any(r.preferred is None for r in records):
        raise ValueError(f"{folder}: a truth file from before `preferred` was recorded; run measure_filters again")
    return {(r.user_id, r.target_id): POSITIVE.get(r.preferred or "") for r in records}


def sides_of(sides: Sides, snapshot: Snapshot, rater: Rater) -> list[bool | None]:
    """The taste's side of each of ``rater``'s modelled votes, in the order of their rows (a pair's by its pair id)."""
    return [sides.get((rater[1], targets[0] if len(targets) == 1 else snapshot.answers[targets[0]].pair_id or ""))
            for targets, _ in snapshot.table[rater]]


def replay(folder: Path, settings: FilterSettings, l2_grid: tuple[float, ...] | None, embeddings: bool,
           searches: int = 1, judge: RewardJudge | None = None) -> Replay:
    """One run's replay; ``judge``: reward-model scores the consensus reads as its column (the run's own have none:
    measure_filters trains nothing)."""
    records = list(read_truth(folder / "truth.jsonl"))
    preferred = taste_sides(folder, records)
    user_type = {r.user_id: r.user_type for r in records}
    pipeline = without_consensus(folder, settings)
    state = pipeline.state
    features = WithEmbeddings() if embeddings else TextFeatures()

    def fresh() -> ConsensusFilter:
        """The worker's consensus filter with the variation asked for, and no fit of an earlier search to start from."""
        return dataclasses.replace(pipeline.consensus, l2_grid=l2_grid or pipeline.consensus.l2_grid, _text=features,
                                   reward_scores=None if judge is None else lambda: judge,
                                   _coef={}, _columns={}, _chosen=None)

    consensus = fresh()
    snapshot = consensus.prepare(state, set(state.votes))
    model = None if snapshot is None else consensus.fit(snapshot)
    if snapshot is None or model is None:
        raise ValueError(f"{folder}: too few votes for a consensus model")
    # the taste's side of each modelled vote, in the order of the design's rows
    taste = [side for rater in model.votes.raters for side in sides_of(preferred, snapshot, rater)]
    known = np.array([side is not None for side in taste]) & ~np.isnan(model.p)
    side = np.array([bool(s) for s in taste])[known]
    judged = model.judged[known]
    # the same design, penalty and folds taught by the taste's own side of every honest vote that has one: what
    # this representation learns from this many votes when no label is wrong (slips and attackers left out)
    honest = np.array([user_type[rater[1]] == "honest" for rater in model.votes.raters])[model.votes.owner]
    has_side = np.array([s is not None for s in taste])
    _, taught = fresh()._cross_validate(dataclasses.replace(model.votes, y=np.array([float(bool(s)) for s in taste])),
                                        (model.l2,), (honest & has_side).astype(float))
    flagged = {rater[1] for rater in searched(state, fresh(), searches)} if searches > 1 else \
        {flag.rater[1] for flag in consensus.decide(snapshot)}
    trust = dict(zip(model.votes.raters, model.trust.weight, strict=True))
    modelled = {rater: len(rows) for rater, rows in snapshot.table.items()}
    screened = consensus.screen(model)
    evidence = [Account(user_type[rater[1]], rater[1], modelled[rater], test, adjusted, float(trust[rater]),
                        rater[1] in flagged)
                for rater, (test, adjusted) in screened.items()
                if user_type[rater[1]] != "honest" or test.p_value <= SHOWN_P]
    honest_tests = [test for rater, (test, _) in screened.items() if user_type[rater[1]] == "honest"]
    taught_known = ~np.isnan(taught[known])
    return Replay(folder.name, len(model.votes.y), model.l2, float(roc_auc_score(side, model.p[known])),
                  float(roc_auc_score(side[taught_known], taught[known][taught_known])),
                  int(judged.sum()), float(((model.p[known][judged] > 0.5) == side[judged]).mean()),
                  Counter(user_type[u] for u in flagged), Counter(user_type.values()),
                  sorted(evidence, key=lambda a: (a.user_type, a.test.p_value)),
                  (sum(t.judged for t in honest_tests), sum(t.against for t in honest_tests),
                   sum(t.expected for t in honest_tests)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="Folders a measure_filters run left, one per scenario.")
    parser.add_argument("--l2-grid", default=None, help="Comma-separated penalties (default: the filter's).")
    parser.add_argument("--embeddings", action="store_true", help="Add MiniLM embeddings to the representation.")
    parser.add_argument("--accounts", action="store_true",
                        help=f"Also show each adversarial account's test, and honest ones at p <= {SHOWN_P}.")
    parser.add_argument("--searches", type=int, default=1,
                        help="Searches as the history grows, each after an equal share of the votes (flags stick).")
    parser.add_argument("--time-scale", type=float, default=0.1, help="The run's time scale (measure_filters').")
    args = parser.parse_args()
    grid = None if args.l2_grid is None else tuple(float(v) for v in args.l2_grid.split(","))
    settings = FilterSettings(time_scale=args.time_scale, simulation=args.time_scale != 1)
    table = Table(title="One consensus search over each run's history: the model against the hidden taste")
    for column in ("run", "votes", "l2", "AUC", "AUC taste-taught", "judged", "taste's side",
                   "honest against: seen / expected", "flagged (of accounts)"):
        table.add_column(column, justify="left" if column in ("run", "flagged (of accounts)") else "right",
                         no_wrap=column == "run")
    accounts = Table(title="Their out-of-fold tests (the screen of the search)")
    for column in ("run", "account", "modelled", "judged", "against", "expected", "p", "adjusted p", "trust",
                   "flagged"):
        accounts.add_column(column, justify="left" if column in ("run", "account") else "right")
    run_folder.check(parser, args.folders)
    for folder in args.folders:
        try:
            r = replay(folder, settings, grid, args.embeddings, args.searches)
        except ValueError as exc:
            parser.error(str(exc))
        flagged = ", ".join(f"{kind} {r.flagged[kind]}/{n}" for kind, n in sorted(r.accounts.items())
                            if kind in ("slow_attacker", "phrase_pusher", "honest") or r.flagged[kind])
        table.add_row(r.run, str(r.votes), f"{r.l2:g}", f"{r.auc:.3f}", f"{r.taught:.3f}", str(r.judged),
                      f"{r.agree:.1%}", r.honest_rates, flagged)
        for a in r.evidence:
            accounts.add_row(r.run, f"{a.user_type} {a.user[:8]}", str(a.modelled), str(a.test.judged),
                             str(a.test.against), f"{a.test.expected:.1f}", f"{a.test.p_value:.4f}",
                             f"{a.adjusted:.3f}", f"{a.trust:.2f}", "yes" if a.flagged else "")
    console.print(table)
    if args.accounts:
        console.print(accounts)


if __name__ == "__main__":
    main()
