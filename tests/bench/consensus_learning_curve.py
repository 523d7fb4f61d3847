"""How well the consensus model's representation learns a taste as the history grows: a learning curve.

    .venv/bin/python -m tests.bench.consensus_learning_curve OUT/A-numbers OUT/B-numbers ... [--sizes 100,200,400]

Why: replayed over the development runs (docs/filters.md, section 13), the consensus model taught by the
taste itself is no better than taught by the votes, so at 180 to 430 votes the representation and the
number of votes bound it, not wrong labels. This says which of the two: the honest votes of several
``measure_filters`` runs under one taste are pooled (each run's raters and answers kept apart), and the
filter's own design (``ConsensusFilter``'s text features and Bradley-Terry rows) is fitted on the taste's
side of a growing random share of the other runs' honest votes, then scored against the taste on each
run's honest votes in turn (leave one run out). A curve that keeps rising says longer histories fix it;
one that flattens says the representation does. Labels are the truth file's ``preferred`` (what no filter
sees); the penalty is each fit's best of the filter's grid on the held-out run (an optimistic choice: the
curve is a ceiling).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from rich.table import Table
from sklearn.metrics import roc_auc_score

from feedback.filters import FilterSettings
from feedback.filters.base import Answer, Rater
from feedback.filters.consensus import ConsensusFilter, Snapshot
from flywheel.cli.common import console
from flywheel.simulation.truth import read_truth
from tests.bench.replay_consensus import modelled, sides_of, taste_sides


def pooled(folders: list[Path], settings: FilterSettings) -> tuple[Snapshot, dict[Rater, str],
                                                                  dict[Rater, list[bool | None]]]:
    """One snapshot of the honest votes of every run, raters named by run; each row's taste side."""
    table: dict[Rater, list[tuple[tuple[str, ...], float]]] = {}
    answers: dict[str, Answer] = {}
    run_of: dict[Rater, str] = {}
    side: dict[Rater, list[bool | None]] = {}
    for folder in folders:
        records = list(read_truth(folder / "truth.jsonl"))
        honest = {r.user_id for r in records if r.user_type == "honest"}
        preferred = taste_sides(folder, records)
        snapshot = modelled(folder, settings)
        for rater, rows in snapshot.table.items():
            if rater[1] not in honest:
                continue
            named = (rater[0], f"{folder.name}/{rater[1]}")
            table[named], run_of[named] = rows, folder.name
            side[named] = sides_of(preferred, snapshot, rater)
        answers |= snapshot.answers
    raters = sorted(table)
    return Snapshot(table, raters, answers, None), run_of, {r: side[r] for r in raters}


def curve(folders: list[Path], sizes: list[int], settings: FilterSettings, seed: int = 0) -> dict[str, list[float]]:
    """Per held-out run, the AUC against the taste after training on ``sizes`` votes of the other runs (NaN where
    the other runs have fewer)."""
    snapshot, run_of, sides = pooled(folders, settings)
    consensus = ConsensusFilter.from_settings(settings)
    design = consensus._votes(snapshot)
    run = np.array([run_of[r] for r in design.raters])[design.owner]
    taste = np.array([s if s is not None else np.nan for r in design.raters for s in sides[r]], dtype=float)
    has_side = ~np.isnan(taste)
    votes = dataclasses.replace(design, y=np.nan_to_num(taste))  # labelled by the taste; ties are never fitted
    rng = np.random.default_rng(seed)
    result = {}
    for held in (f.name for f in folders):
        test = has_side & (run == held)
        pool = rng.permutation(np.flatnonzero(has_side & (run != held)))
        aucs = []
        for size in sizes:
            if size > len(pool):
                aucs.append(float("nan"))
                continue
            train = np.zeros(len(taste), dtype=bool)
            train[pool[:size]] = True
            fits = (consensus._fit(votes, train, l2, None, np.ones(len(taste))) for l2 in consensus.l2_grid)
            aucs.append(max(float(roc_auc_score(taste[test], consensus._probability(votes, coef, test)))
                            for coef in fits))
        result[held] = aucs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="measure_filters folders of runs under one taste.")
    parser.add_argument("--sizes", default="100,200,400,800", help="Training votes, comma-separated.")
    parser.add_argument("--time-scale", type=float, default=0.1, help="The runs' time scale (measure_filters').")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = FilterSettings(time_scale=args.time_scale, simulation=args.time_scale != 1)
    table = Table(title="AUC against the taste of a model taught by the taste on N honest votes of the other runs")
    table.add_column("held-out run", no_wrap=True)
    for size in sizes:
        table.add_column(f"N = {size}", justify="right")
    for held, aucs in curve(args.folders, sizes, settings).items():
        table.add_row(held, *("" if np.isnan(a) else f"{a:.3f}" for a in aucs))
    console.print(table)


if __name__ == "__main__":
    main()
