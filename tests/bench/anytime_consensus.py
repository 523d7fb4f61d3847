"""An anytime-valid consensus test beside the filter's own, on the same histories and searches.

    .venv/bin/python -m tests.bench.anytime_consensus OUT/NAME [OUT/NAME ...] [--searches 10] [--time-scale 0.1]
    .venv/bin/python -m tests.bench.anytime_consensus --synthetic 2 [--searches 10]

Why: the filter's test (``feedback/filters/consensus.py``, "The test") is a likelihood-ratio p-value,
Benjamini-Hochberg adjusted over the raters of one search, and it is repeated at every search while a
rater votes; early in a history the family is small, down to one rater tested at almost the full
level (docs/filters.md, section 12). An e-value bounds what repetition costs: its expectation under
the null is 1, so by Ville's inequality an honest rater's e-value, recomputed as their votes
accumulate, ever reaches ``1/level`` with a chance of at most ``level``, however many searches test
them and however many raters are tested (no family to count). Strictly so when the chances a rater's
earlier votes are judged at do not move between searches; they move as the model learns, which is
one thing measured here. Before the filter changes, this measures what the guarantee costs in
attackers caught and buys in honest raters spared.

The variant (``AnytimeConsensus``) is the filter itself with two methods replaced: a rater's p-value is
``1/E`` (an anytime-valid p-value), ``E`` the likelihood ratio of their judged votes against the honest
chances ``q``, averaged over alternatives that invert a share ``rho`` of the votes, ``rho`` from
``min_rate`` to 1/2 in ``ALTERNATIVES`` steps (a uniform prior: attackers at any share and coin
flippers alike); and it is not adjusted, since the level is already one per rater for all time. The
model, its trust and calibration, the votes judged, the screen and the exact leave-one-out test are
the filter's, so any difference is the decision's. Both run the same ``--searches`` searches, each
after an equal share of the votes, flags sticking (``replay_consensus.searched``).

Folders are ``measure_filters`` runs (the consensus' own flags cleared, as in ``replay_consensus``);
``--synthetic N`` runs N seeds of a synthetic population (60 honest raters of 30 votes, 6 attackers of
40 votes at 20 % and at 40 % poison, 3 coin flippers) under every taste of the simulator, their votes
in a random order in time.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from feedback.filters import FilterSettings
from feedback.filters.base import FilterState, Rater
from feedback.filters.consensus import ConsensusFilter, Test
from flywheel.cli.common import console
from flywheel.simulation.tastes import TASTES
from flywheel.simulation.truth import read_truth
from tests.bench import run_folder
from tests.bench.replay_consensus import searched, without_consensus
from tests.bench.synthetic_history import Population, build_history, interleaved

ALTERNATIVES = 4
SHOWN = ("honest", "slow_attacker", "phrase_pusher", "attacker", "flipper")


def e_value(against: np.ndarray, q: np.ndarray, rates: np.ndarray) -> float:
    """The likelihood ratio of votes going ``against`` the model (each at chance ``q`` under the null) against a rater
    who inverts a share ``rho`` of their votes besides, averaged over ``rates``: expectation 1 under the null."""
    inverted = q[None, :] + rates[:, None] * (1 - 2 * q[None, :])
    log_ratio = np.where(against[None, :], np.log(inverted / q), np.log((1 - inverted) / (1 - q))).sum(axis=1)
    return float(np.exp(log_ratio).mean())


@dataclass(kw_only=True)
class AnytimeConsensus(ConsensusFilter):
    """The filter, deciding on an e-value per rater at ``max_p_value`` for all time instead of an adjusted p-value."""

    def _p_value(self, against: np.ndarray, q: np.ndarray) -> float:
        rates = np.linspace(self.min_rate, 0.5, ALTERNATIVES)
        return min(1.0, 1 / e_value(against, q, rates))

    def _adjusted(self, tests: dict[int, Test], raters: int) -> dict[int, float]:
        return {me: test.p_value for me, test in tests.items() if test.judged >= self.min_votes}


def compared(state: FilterState, settings: FilterSettings, searches: int) -> dict[str, set[Rater]]:
    """The raters each rule flags over the same searches."""
    return {name: searched(state, kind.from_settings(settings), searches)
            for name, kind in (("filter", ConsensusFilter), ("anytime", AnytimeConsensus))}


def counts(flagged: set[Rater], kinds: Mapping[Rater, str], present: Mapping[str, int]) -> str:
    """Flagged of present, per kind of user."""
    found = Counter(kinds[r] for r in flagged)
    return ", ".join(f"{kind} {found[kind]}/{n}" for kind, n in sorted(present.items())
                     if kind in SHOWN or found[kind])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="*", help="Folders a measure_filters run left, one per scenario.")
    parser.add_argument("--synthetic", type=int, default=0, help="Seeds of synthetic populations under every taste.")
    parser.add_argument("--searches", type=int, default=10,
                        help="Searches as the history grows, each after an equal share of the votes (flags stick).")
    parser.add_argument("--time-scale", type=float, default=0.1, help="The runs' time scale (measure_filters').")
    args = parser.parse_args()
    if not args.folders and not args.synthetic:
        parser.error("name run folders, or --synthetic N")
    table = Table(title=f"Flagged against the consensus in {args.searches} searches: the filter's test and an "
                        "anytime-valid one")
    for column in ("history", "filter (adjusted p-value)", "anytime (e-value)"):
        table.add_column(column, no_wrap=column == "history")
    settings = FilterSettings(time_scale=args.time_scale, simulation=args.time_scale != 1)
    run_folder.check(parser, args.folders)
    for folder in args.folders:
        user_type = {r.user_id: r.user_type for r in read_truth(folder / "truth.jsonl")}
        pipeline = without_consensus(folder, settings)
        state = pipeline.state
        kinds: dict[Rater, str] = {rater: user_type[rater[1]] for rater in state.votes}
        present = Counter(kinds[r] for r in state.votes if not state.flags.get(r))  # the consensus' to judge
        flagged = compared(state, settings, args.searches)
        table.add_row(folder.name, *(counts(found, kinds, present) for found in flagged.values()))
        console.print(f"{folder.name}: done", style="dim")
    for seed in range(args.synthetic):
        for taste in TASTES:
            for share in (0.2, 0.4):
                population = Population(honest=60, honest_votes=30, attackers=6, attacker_votes=40,
                                        poison_share=share, flippers=3, taste=taste, seed=seed)
                history = build_history(population)
                state = interleaved(history.state, seed)
                flagged = compared(state, FilterSettings(), args.searches)
                table.add_row(f"synthetic {taste}, {share:.0%} poison, seed {seed}",
                              *(counts(found, history.kinds, Counter(history.kinds.values()))
                                for found in flagged.values()))
                console.print(f"synthetic {taste}, {share:.0%}, seed {seed}: done", style="dim")
    console.print(table)


if __name__ == "__main__":
    main()
