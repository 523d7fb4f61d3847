"""The first consensus search's cost, before and after the compressed design and the single BLAS thread, in one run.

    .venv/bin/python -m tests.bench.bench_consensus_search [--honest 150] [--taste numbers] [--seed 0]

The first search after a worker starts is the costliest: every rater is reviewed and the penalty
grid is cross-validated (``ConsensusFilter``). This builds a fixed synthetic history in memory
(``synthetic_history.py``: by default 150 honest raters x 40 votes, 8 slow attackers x 40, 10 coin
flippers x 20, about 6 500 votes: the size at which 172 s was measured), then runs that first
search with a fresh filter twice: as it was (``compress=False``, the BLAS library's own threads)
and as it is now, and prints both times, their ratio and whether the verdicts (raters flagged,
with their judged votes and disagreements) are identical.

    .venv/bin/python -m tests.bench.bench_consensus_search --campaign [--honest 150] [--seed 0]

times the campaign search's part of a batch instead, on the same history: the first search (every
rater, every answer indexed) as it ran inside the batch (``CampaignFilter.review``), against what
the batch does now (``prepare``: the snapshot), the rest (``decide``) running in a thread beside
the stream; and whether ``decide`` on the snapshot flags what ``review`` flags.

    .venv/bin/python -m tests.bench.bench_consensus_search --recall [--taste development] [--seeds 0,1,2]
        [--looks 4] [--honest 60] [--honest-votes 40] [--attackers 8] [--poison 0.4] [--list-share 0.5]

measures what the consensus search decides instead of what it costs: on each synthetic history (one per
taste and seed; ``--taste`` names tastes or a set of them, ``development`` or ``validation``) one filter
searches ``--looks`` times, on each rater's first quarter of votes, then half, and so on, as a worker
searches again while raters vote (a flag is sticky: a rater flagged at one search leaves the model of the
next). It prints the attackers caught, the honest raters flagged and the coin flippers flagged, per history
and in all. ``--list-share 0.11`` (mostly prose answers) under a taste about layout makes most pairs ties: the
regime of the ``prose`` demo run in which honest raters were flagged (docs/filters.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from feedback.filters import FilterSettings, Pipeline
from feedback.filters.base import FilterState, Flag, Rater
from feedback.filters.consensus import ConsensusFilter
from flywheel.cli.common import console
from flywheel.simulation.tastes import TASTE_SETS
from tests.bench.synthetic_history import History, Population, build_history

T = TypeVar("T")


def verdicts(flags: list[Flag]) -> list[tuple[str, str, int, int]]:
    """What a search decided, comparable across runs: who, why, on how many judged votes, how many against."""
    return sorted((f.rater[1], f.reason, f.evidence["judged_votes"], f.evidence["disagreements"]) for f in flags)


@dataclasses.dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # this process's CPU seconds, every thread's: less sensitive than wall time to other load


def timed(call: Callable[[], T]) -> tuple[Timed, T]:
    """Seconds ``call()`` took, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return Timed(time.perf_counter() - wall, time.process_time() - cpu), result


def first_search(history: History, **variant: object) -> tuple[Timed, list[Flag]]:
    """Seconds and flags of a fresh filter's first search over every rater (``variant``: ConsensusFilter fields)."""
    consensus: ConsensusFilter = dataclasses.replace(Pipeline(FilterSettings()).consensus,
                                                     **variant)  # type: ignore[arg-type]
    return timed(lambda: consensus.review(history.state, set(history.state.votes)))


def campaign_part(history: History) -> None:
    """Print the campaign search's cost to a batch before (all of it) and after (the snapshot), fresh filters each."""
    everyone = set(history.state.votes)
    inside, beside = Pipeline(FilterSettings()).campaigns, Pipeline(FilterSettings()).campaigns
    before, old = timed(lambda: inside.review(history.state, everyone))
    after, snapshot = timed(lambda: beside.prepare(history.state, everyone))
    assert snapshot is not None
    thread, new = timed(lambda: beside.decide(snapshot))
    console.print(f"before, inside the batch: {before.wall:.3f} s ({before.cpu:.3f} s CPU), {len(old)} flagged")
    console.print(f"after, the batch's part (snapshot): {after.wall:.4f} s ({after.cpu:.4f} s CPU)")
    console.print(f"after, in the thread: {thread.wall:.3f} s, {len(new)} flagged")
    console.print(f"ratio before/after: {before.wall / after.wall:.0f}x wall, {before.cpu / max(after.cpu, 1e-9):.0f}x "
                  f"CPU; verdicts identical: {new == old}")


KINDS = ("attacker", "honest", "flipper")


def prefix(state: FilterState, share: float) -> FilterState:
    """The state after each rater's first ``share`` of votes (at least one): the history as a later search saw it."""
    earlier = FilterState(answers=state.answers, pairs=state.pairs)
    for votes in state.votes.values():
        for vote in votes[: max(1, round(len(votes) * share))]:
            earlier.record(vote, accepted=True)
    return earlier


def repeated_searches(history: History, looks: int) -> dict[Rater, Flag]:
    """The raters one filter flags over ``looks`` searches on growing prefixes of the history (flags are sticky)."""
    consensus = Pipeline(FilterSettings()).consensus
    flagged: dict[Rater, Flag] = {}
    for look in range(1, looks + 1):
        state = prefix(history.state, look / looks)
        for rater in flagged:
            state.flags[rater]["against_consensus"] = {}
        flagged |= {f.rater: f for f in consensus.review(state, set(state.votes) - set(flagged))}
    return flagged


def recall(population: Population, tastes: list[str], seeds: list[int], looks: int) -> None:
    """Print, per taste and seed and in all, the raters of each kind flagged and how many there were."""
    total: Counter[str] = Counter()
    for taste in tastes:
        for seed in seeds:
            history = build_history(dataclasses.replace(population, taste=taste, seed=seed))
            took, flagged = timed(functools.partial(repeated_searches, history, looks))
            kinds, got = Counter(history.kinds.values()), Counter(history.kinds[r] for r in flagged)
            total.update({f"{k} flagged": got[k] for k in KINDS} | {k: kinds[k] for k in KINDS})
            honest = [(r[1], f.evidence["judged_votes"], f.evidence["disagreements"]) for r, f in flagged.items()
                      if history.kinds[r] == "honest"]
            console.print(f"{taste:13} seed {seed}: " + ", ".join(f"{k} {got[k]}/{kinds[k]}" for k in KINDS)
                          + f" ({took.wall:.0f} s){f'; honest flagged: {honest}' if honest else ''}")
    console.print("all: " + ", ".join(f"{k} {total[k + ' flagged']}/{total[k]}" for k in KINDS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--honest", type=int, default=150, help="honest raters (40 votes each)")
    parser.add_argument("--taste", default="numbers", help="the synthetic raters' taste (a simulator taste); "
                        "--recall: comma-separated, or a set: development, validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--campaign", action="store_true", help="time the campaign search's part of a batch instead")
    parser.add_argument("--recall", action="store_true", help="measure the raters flagged instead of the cost")
    parser.add_argument("--seeds", default="0", help="--recall: comma-separated seeds")
    parser.add_argument("--looks", type=int, default=4, help="--recall: searches on growing prefixes")
    parser.add_argument("--honest-votes", type=int, default=40)
    parser.add_argument("--attackers", type=int, default=8)
    parser.add_argument("--attacker-votes", type=int, default=40)
    parser.add_argument("--poison", type=float, default=0.4, help="share of an attacker's votes inverted")
    parser.add_argument("--flippers", type=int, default=10)
    parser.add_argument("--list-share", type=float, default=0.5, help="share of answers laid out as lists")
    args = parser.parse_args()
    population = Population(honest=args.honest, honest_votes=args.honest_votes, attackers=args.attackers,
                            attacker_votes=args.attacker_votes, poison_share=args.poison, flippers=args.flippers,
                            taste=args.taste, seed=args.seed, list_share=args.list_share)
    if args.recall:
        tastes = list(TASTE_SETS[args.taste]) if args.taste in TASTE_SETS else args.taste.split(",")
        recall(population, tastes, [int(s) for s in args.seeds.split(",")], args.looks)
        return
    history = build_history(population)
    console.print(f"{history.votes} votes, {len(history.state.answers)} answers, {len(history.state.votes)} raters")
    if args.campaign:
        campaign_part(history)
        return
    after, new = first_search(history)
    console.print(f"after (compressed design, 1 BLAS thread): {after.wall:.1f} s ({after.cpu:.1f} s CPU), "
                  f"{len(new)} raters flagged")
    before, old = first_search(history, compress=False, blas_threads=None)
    console.print(f"before (design as built, BLAS default threads): {before.wall:.1f} s ({before.cpu:.1f} s CPU), "
                  f"{len(old)} raters flagged")
    kinds = {f.rater: history.kinds[f.rater] for f in new}
    console.print(f"flagged: {sorted(kinds.values()).count('attacker')} attackers, "
                  f"{sorted(kinds.values()).count('flipper')} coin flippers, "
                  f"{sorted(kinds.values()).count('honest')} honest")
    same = verdicts(new) == verdicts(old)
    console.print(f"ratio before/after: {before.wall / after.wall:.1f}x wall, {before.cpu / after.cpu:.1f}x CPU; "
                  f"verdicts identical: {same}")


if __name__ == "__main__":
    main()
