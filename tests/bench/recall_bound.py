"""The recall a test that knows the hidden taste reaches on a measured run: the reference for the filters' misses.

    .venv/bin/python -m tests.bench.recall_bound OUT/NAME [OUT/NAME ...] [--false-positive 0.02]

Why: the targets (adversarial recall >= 95 %, honest false positives <= 2 %) hold per scenario, but a
patient account that inverts a fifth of its 40 votes leaves a handful of votes against the taste, and a
handful is what an honest user's slips leave too. How much of a miss is the filters' and how much is the
run's? The oracle here knows what no filter knows: the taste's own verdict on every answer served
(``preferred`` in the truth file) and the honest users' slip rate (``error_rate`` of the scenario file,
the largest if its honest groups differ). It tests each account once, on its whole history: its votes
against the taste, by the binomial tail of an honest user's slips on as many votes, flagging at a tail of
at most ``--false-positive`` (so an honest account is flagged with at most that chance: the honest budget of
the target). For one account that is the most powerful test there is at that level, whatever share of its
votes an attacker inverts (the binomial's likelihood ratio grows with the count); and the oracle has no
model to learn, no multiple testing over searches and raters, and a null that is the simulator's own.
The consensus filter, which must learn the taste from the crowd, test at every search and bound its false
discoveries among many raters, does worse. Filters that read something else (timing, a phrase,
coordination) can do better, so the report sets the filters' catches beside the oracle's: an account's votes
count in ``either`` when the oracle flags it, else those the filters quarantined. Where ``either`` is under
the target, a better consensus would not have met it on that run; only other evidence could.

The oracle's 2 % is per account, not per run's honest votes: with twenty honest accounts of ten votes it
flags one in most runs, 5 % of their votes. So the table's figures are followed by ``hindsight``: the best
recall of any threshold on the oracle's tails whose honest false positives stay within the target on that
run, the threshold chosen knowing who is honest. No test that ranks accounts by their votes against the taste
does better on that run while meeting the honest target.

Reads each folder a ``measure_filters`` run leaves (``truth.jsonl``, ``flywheel.db``); ``measure_filters``
prints the same table after each scenario. Truth files written before ``preferred`` was recorded are refused.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from scipy.stats import binom
from sqlalchemy.orm import Session, sessionmaker

from flywheel.cli.common import console
from flywheel.simulation.report import Whereabouts, settled
from flywheel.simulation.scenario import HonestGroup, PhrasePusherGroup, load_scenario
from flywheel.simulation.truth import TruthRecord
from tests.bench import run_folder

FALSE_POSITIVE = 0.02  # the target's honest budget (measure_filters.MAX_HONEST_FP)
_KINDS_SHOWN = ("fast_bot", "campaign", "slow_attacker", "phrase_pusher", "honest")  # noisy users are neither kind


@dataclass(frozen=True)
class Account:
    """One account's votes: how many, how many unlike the taste's verdict, how many the filters quarantined."""

    user_type: str
    adversarial: bool
    votes: int
    against: int
    quarantined: int


@dataclass
class Row:
    """One user type: votes, and those the filters, the oracle and either of them caught."""

    user_type: str
    votes: int = 0
    filters: int = 0
    oracle: int = 0
    either: int = 0

    def add(self, account: Account, flagged: bool) -> None:
        """Count one account, flagged by the oracle or not."""
        self.votes += account.votes
        self.filters += account.quarantined
        self.oracle += account.votes if flagged else 0
        self.either += account.votes if flagged else account.quarantined


def accounts(records: Iterable[TruthRecord], found: Whereabouts) -> list[Account]:
    """Each account of the truth file with its votes against the taste and its quarantined votes."""
    mine: dict[str, list[TruthRecord]] = defaultdict(list)
    for record in records:
        if record.preferred is None:
            raise ValueError(f"{record.event_id} has no `preferred` verdict: a truth file from before it was "
                             "recorded; run measure_filters again")
        mine[record.user_id].append(record)
    return [Account(votes[0].user_type, votes[0].adversarial, len(votes),
                    sum(r.vote != r.preferred for r in votes), sum(r.event_id in found.quarantined for r in votes))
            for votes in mine.values()]


def slip_tail(account: Account, error_rate: float) -> float:
    """The chance an honest user slipping at ``error_rate`` leaves as many of as many votes against the taste."""
    return float(binom.sf(account.against - 1, account.votes, error_rate)) if account.against > 0 else 1.0


def oracle_flags(account: Account, error_rate: float, false_positive: float) -> bool:
    """Whether an honest user slipping at ``error_rate`` would leave as many votes against the taste with a chance
    of at most ``false_positive``."""
    return slip_tail(account, error_rate) <= false_positive


def hindsight(found: list[Account], error_rate: float, max_honest_fp: float = FALSE_POSITIVE) -> float | None:
    """The best adversarial recall of any threshold on the oracle's tails whose honest false positives on this run
    stay within ``max_honest_fp`` of the honest votes (the target's own measure), the threshold chosen knowing who
    is honest: a ceiling for every test that ranks accounts by their votes against the taste. None: no adversary.

    Why beside the oracle: its fixed 2 % per account is the budget per honest account, not per run's honest votes;
    with twenty honest accounts of ten votes, one honest account flagged is 5 % of their votes, and the oracle
    flags one in most runs of that shape."""
    adversarial = sum(a.votes for a in found if a.adversarial)
    honest = sum(a.votes for a in found if a.user_type == "honest")
    if not adversarial:
        return None
    best, caught, wrongly = 0.0, 0, 0
    ranked = sorted(((slip_tail(a, error_rate), a) for a in found), key=lambda pair: pair[0])
    for n, (tail, account) in enumerate(ranked):
        caught += account.votes if account.adversarial else 0
        wrongly += account.votes if account.user_type == "honest" else 0
        tied = n + 1 < len(ranked) and ranked[n + 1][0] == tail
        if not tied and wrongly <= max_honest_fp * honest:
            best = max(best, caught / adversarial)
    return best


def bound(found: list[Account], error_rate: float, false_positive: float = FALSE_POSITIVE) -> list[Row]:
    """Per user type, adversarial types first then honest: votes, and those caught by filters, oracle, either."""
    rows: dict[str, Row] = {}
    for account in sorted(found, key=lambda a: (not a.adversarial, a.user_type)):
        rows.setdefault(account.user_type, Row(account.user_type)).add(
            account, oracle_flags(account, error_rate, false_positive))
    return [row for row in rows.values() if row.user_type in _KINDS_SHOWN]


def recall(rows: list[Row], field: str) -> float | None:
    """The share of adversarial votes ``field`` ("filters", "oracle", "either") caught."""
    adversarial = [r for r in rows if r.user_type != "honest"]
    votes = sum(r.votes for r in adversarial)
    return sum(getattr(r, field) for r in adversarial) / votes if votes else None


def slip_rate(scenario: str) -> float:
    """The honest users' slip rate of a shipped scenario (the largest, if its groups differ)."""
    groups = load_scenario(scenario).groups
    return max(g.error_rate for g in groups if isinstance(g, HonestGroup | PhrasePusherGroup))


@dataclass(frozen=True)
class Bound:
    """The oracle's table of a run, and the ceiling of ``hindsight``."""

    rows: list[Row]
    hindsight: float | None


def measure(truth: Path, sessions: sessionmaker[Session], false_positive: float = FALSE_POSITIVE) -> Bound:
    """The oracle's table for a run's truth file and its store."""
    return oracle(*settled(truth, sessions), false_positive)


def oracle(records: list[TruthRecord], found: Whereabouts, false_positive: float = FALSE_POSITIVE) -> Bound:
    """The oracle's table for a run's records and where the store put them."""
    if not records:
        raise ValueError("the truth file holds no vote")
    error_rate, mine = slip_rate(records[0].scenario), accounts(records, found)
    return Bound(bound(mine, error_rate, false_positive), hindsight(mine, error_rate))


def show(found: Bound, title: str) -> None:
    table = Table(title=title)
    for column in ("user type", "votes", "filters", "oracle", "either"):
        table.add_column(column, justify="left" if column == "user type" else "right")
    for r in found.rows:
        table.add_row(r.user_type, str(r.votes), *(f"{n} ({n / r.votes:.0%})" for n in (r.filters, r.oracle, r.either)))
    console.print(table)
    figures = {field: recall(found.rows, field) for field in ("filters", "oracle", "either")} | \
        {f"hindsight (honest FP <= {FALSE_POSITIVE:.0%} of votes)": found.hindsight}
    console.print("adversarial recall: " + ", ".join(
        f"{field} {'n/a' if value is None else f'{value:.1%}'}" for field, value in figures.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="Folders a measure_filters run left, one per scenario.")
    parser.add_argument("--false-positive", type=float, default=FALSE_POSITIVE,
                        help="The chance the oracle may flag an honest account (default: the target's 2 %%).")
    args = parser.parse_args()
    if not 0 < args.false_positive < 1:
        parser.error("--false-positive must be between 0 and 1")
    run_folder.check(parser, args.folders)
    for folder in args.folders:
        try:
            show(measure(folder / "truth.jsonl", run_folder.sessions(folder), args.false_positive), str(folder))
        except ValueError as exc:
            parser.error(str(exc))


if __name__ == "__main__":
    main()
