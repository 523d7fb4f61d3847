"""The consensus with a trained reward model's score among its columns, as a deployment has it after its first round.

    .venv/bin/python -m tests.bench.reward_column OUT/A OUT/B [OUT/C ...] [--searches 10] [--time-scale 0.1]

Why: the consensus model learns the taste from each run's own votes, and under tastes it learns slowly it is still
short of votes at a scenario's size (docs/filters.md, section 13). A deployment past its first round also has the
reward model the trainer taught on the earlier votes, whose score the scorer writes for every new answer and the
consensus reads as one more column (section 2). The shipped scenarios train nothing, so their figures never have it.

Give the folders of ``measure_filters`` runs under one taste (other populations of one deployment). For each run, a
reward model is taught, as a round teaches it (``trainer.reward`` with ``TrainConfig``'s defaults, the round's
held-out split), on the accepted votes of the *other* folders: what the worker let through there, the poison it
missed included; no truth file is read for it. It scores every answer of the run (the scorer's work), and the run's
history is replayed through the consensus (``replay_consensus``) without and with that column. Printed per run:
the teaching pairs and the reward model's held-out accuracy on them, its own AUC against the run's taste (the truth
file's ``preferred``, what no filter sees), the consensus model's AUC, the honest accounts' share of judged votes
against the model seen and expected by the calibration (``Replay.honest_rates``), and the accounts flagged over
``--searches`` searches, without and with the column.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table
from sklearn.metrics import roc_auc_score
from sqlalchemy import select

from feedback.db.models import Completion
from feedback.filters import FilterSettings
from feedback.filters.consensus import Snapshot
from feedback.filters.reliability import RewardJudge
from flywheel.cli.common import console
from flywheel.simulation.truth import read_truth
from tests.bench import run_folder
from tests.bench.replay_consensus import Replay, Sides, modelled, replay, sides_of, taste_sides
from trainer.config import TrainConfig
from trainer.pairs import PreferencePair, load_pairs, split_pairs
from trainer.policy import ProgressFn, rich_progress
from trainer.reward import default_backbone, evaluate_reward_model, train_reward_model

KINDS = ("slow_attacker", "phrase_pusher", "honest")  # the accounts the consensus is there for, and the honest


@dataclass(frozen=True)
class Taught:
    """A reward model taught on other runs' accepted votes, as the run's answers' scores."""

    pairs: int
    accuracy: float  # on the held-out prompts of the teaching pairs, as the round measures it
    judge: RewardJudge


def teaching_pairs(folders: Sequence[Path]) -> list[PreferencePair]:
    """Every preference pair the accepted votes of ``folders`` support, as a round loads them from its store."""
    return [pair for folder in folders for pair in load_pairs(run_folder.sessions(folder))]


def taught_judge(teachers: Sequence[Path], target: Path, config: TrainConfig, workdir: Path,
                 progress: ProgressFn | None = None) -> Taught:
    """Train on ``teachers``' accepted votes, score every answer ``target`` served (what the scorer writes)."""
    train, heldout = split_pairs(teaching_pairs(teachers), config.heldout_fraction)
    model = train_reward_model(default_backbone(), train, config, workdir, progress)
    accuracy = evaluate_reward_model(model, heldout).heldout_accuracy
    with run_folder.sessions(target)() as session:
        answers = session.execute(select(Completion.response_id, Completion.messages, Completion.answer)).all()
    scores = model.mean([a.messages for a in answers], [a.answer for a in answers])
    return Taught(len(train) + len(heldout), accuracy,
                  RewardJudge({a.response_id: float(s) for a, s in zip(answers, scores, strict=True)}, accuracy))


def judge_auc(judge: RewardJudge, snapshot: Snapshot, sides: Sides) -> float:
    """The reward model alone against the taste on the votes the consensus models: a thumb's score above the median
    says up, a pair's A - B score says A."""
    margins, truths = [], []
    for rater, rows in snapshot.table.items():
        for (targets, _), side in zip(rows, sides_of(sides, snapshot, rater), strict=True):
            if side is not None:
                first = judge.scores[targets[0]]
                margins.append(first - (judge.scores[targets[1]] if len(targets) == 2 else judge.median))
                truths.append(side)
    return float(roc_auc_score(np.array(truths), np.array(margins)))


def flagged(r: Replay) -> str:
    return ", ".join(f"{kind} {r.flagged[kind]}/{r.accounts[kind]}" for kind in KINDS if r.accounts[kind])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="measure_filters folders of runs under one taste.")
    parser.add_argument("--searches", type=int, default=10,
                        help="Searches as the history grows, each after an equal share of the votes (flags stick).")
    parser.add_argument("--time-scale", type=float, default=0.1, help="The runs' time scale (measure_filters').")
    args = parser.parse_args()
    if len(args.folders) < 2:
        parser.error("give at least two folders: each run's reward model is taught on the others")
    run_folder.check(parser, args.folders)
    settings = FilterSettings(time_scale=args.time_scale, simulation=args.time_scale != 1)
    config = TrainConfig()
    table = Table(title=f"The consensus without and with a reward model taught on the other runs' accepted votes "
                        f"({args.searches} searches each)")
    for column in ("run", "teaching pairs", "RM held-out acc.", "RM AUC", "AUC without", "AUC with",
                   "honest seen/expected without", "honest seen/expected with", "flagged without",
                   "flagged with"):
        table.add_column(column, justify="left" if column in ("run", "flagged without", "flagged with") else "right",
                         no_wrap=column == "run")
    with tempfile.TemporaryDirectory(prefix="reward-column-") as work, rich_progress() as progress:
        for target in args.folders:
            console.print(f"{target.name}: teaching a reward model on the other runs' accepted votes")
            taught = taught_judge([f for f in args.folders if f != target], target, config, Path(work), progress)
            sides = taste_sides(target, list(read_truth(target / "truth.jsonl")))
            without = replay(target, settings, None, False, args.searches)
            with_column = replay(target, settings, None, False, args.searches, judge=taught.judge)
            row = (target.name, str(taught.pairs), f"{taught.accuracy:.3f}",
                   f"{judge_auc(taught.judge, modelled(target, settings), sides):.3f}", f"{without.auc:.3f}",
                   f"{with_column.auc:.3f}", without.honest_rates, with_column.honest_rates, flagged(without),
                   flagged(with_column))
            console.print(" | ".join(row))  # each run as it ends: four trainings take most of an hour
            table.add_row(*row)
    console.print(table)


if __name__ == "__main__":
    main()
