"""How often the consensus test condemns a rater, by history length and disagreement rate.

    .venv/bin/python -m tests.bench.consensus_power [--trials 20000] [--judged 0.94] [--population-rate 0.05]

The decision is ``ConsensusFilter.condemns`` at the configured ``FLYWHEEL_FILTER_CONSENSUS_*``
settings; only the votes are simulated: of a rater's ``votes``, each is judged (the consensus
model is confident, not a tie) with probability ``--judged`` and goes against the consensus
with the column's probability. An honest rater's rate is their slips plus the model's errors
(5 % and 8 % below); a slow attacker's is its poison share plus those (30 %, 40 %). The
figures say how long an attacker must vote before it is caught, and what that costs in
honest raters flagged: the trade the thresholds make (README, "The consensus filter").
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.table import Table

from feedback.filters import FilterSettings, Pipeline
from feedback.filters.consensus import ConsensusFilter
from flywheel.cli.common import console

HISTORIES = (10, 16, 20, 30, 40, 100)
RATES = {"honest, 5 %": 0.05, "honest, 8 %": 0.08, "attacker, 30 %": 0.3, "attacker, 40 %": 0.4}


def condemned_share(consensus: ConsensusFilter, votes: int, rate: float, judged_share: float,
                    population_rate: float, trials: int, rng: np.random.Generator) -> float:
    judged = rng.binomial(votes, judged_share, trials)
    against = rng.binomial(judged, rate)
    pairs, counts = np.unique(np.stack([judged, against]), axis=1, return_counts=True)
    hits = sum(int(c) for (n, k), c in zip(pairs.T, counts, strict=True)
               if consensus.condemns(int(n), int(k), population_rate))
    return hits / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--judged", type=float, default=0.94, help="share of votes the model judges")
    parser.add_argument("--population-rate", type=float, default=0.05, help="p0, the population's disagreement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    consensus = Pipeline(FilterSettings()).consensus
    table = Table(title=f"Share of raters condemned ({args.trials} trials each; {args.judged:.0%} of votes judged, "
                        f"population rate {args.population_rate:.0%})")
    table.add_column("votes", justify="right")
    for name in RATES:
        table.add_column(name, justify="right")
    for votes in HISTORIES:
        shares = [condemned_share(consensus, votes, rate, args.judged, args.population_rate, args.trials, rng)
                  for rate in RATES.values()]
        table.add_row(str(votes), *(f"{share:.2%}" for share in shares))
    console.print(table)

if __name__ == "__main__":
    main()
