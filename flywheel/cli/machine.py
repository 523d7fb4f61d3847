"""``flywheel label`` and ``flywheel constitution``: machine feedback from a model the engine serves, through Kafka."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from feedback.ai.batch import Outcome, Tally, run_to_broker
from feedback.ai.engine import Engine, EngineUnavailable
from feedback.producer import BrokerUnavailable
from flywheel.cli.common import console, fail, setup_logging, store_sessions
from serving.settings import ServingSettings

T = TypeVar("T")

CONCURRENCY = typer.Option(min=1, help="Requests in flight at once (the engine batches them).")


def _run(settings: ServingSettings, model: str, items: Sequence[T], work: Callable[[Engine, T], Outcome],
         concurrency: int, what: str) -> Tally:
    """Check the engine serves ``model``, then ``work`` on every item with a progress bar, events to the broker."""
    with Engine(settings.resolved_engine_url, settings.engine_timeout) as engine:
        try:
            engine.require(model)
        except EngineUnavailable as exc:
            fail(str(exc))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        try:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task(what, total=len(items))
                return run_to_broker(items, work, engine, settings, concurrency, lambda: progress.advance(task))
        except (EngineUnavailable, BrokerUnavailable) as exc:
            fail(f"{exc} (what the broker acknowledged before is kept: a re-run goes on from there)")
        except KeyboardInterrupt:
            console.print("interrupted: the events of the items that finished were sent; a re-run goes on from there")
            raise typer.Exit(130) from None


def _summary(tally: Tally, title: str) -> None:
    table = Table("outcome", "items", title=title)
    for status, n in sorted(tally.statuses.items()):
        table.add_row(status, str(n))
    console.print(table)
    console.print(f"{tally.sent} events sent to the broker; the worker checks and stores them")
    for error in tally.errors:
        console.print(f"[yellow]failed:[/] {error}")


def label(
    judge: Annotated[str | None, typer.Option(
        help="The judge: a model name the engine serves. Default: the base model (<FLYWHEEL_REGISTERED_MODEL>-base)."
    )] = None,
    rubric: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="The judge's criteria, a text file. Default: feedback/ai/rubric.md.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most pairs judged this run.")] = 100,
    concurrency: Annotated[int, CONCURRENCY] = 8,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ask an AI judge to pick between the answers of stored pairs no end user voted on, in both orders.

    Verdicts are stored as feedback with source=ai (FLYWHEEL_FILTER_AI_WEIGHT) through Kafka and the worker; a pair
    the judge picks by position in both orders is a tie. A re-run skips pairs the judge already judged.
    """
    from feedback.ai.label import DEFAULT_RUBRIC, Rubric, judge_pair, pairs_to_label

    setup_logging(verbose)
    settings = ServingSettings()
    judge = judge or settings.base_engine_model
    try:
        criteria = Rubric.load(rubric or DEFAULT_RUBRIC)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    with store_sessions()() as session:
        pairs = pairs_to_label(session, judge, limit)
    if not pairs:
        console.print(f"nothing to label: every stored pair has a user's vote or {judge}'s verdict")
        return
    tally = _run(settings, judge, pairs, lambda engine, pair: judge_pair(engine, judge, criteria, pair), concurrency,
                 f"judging {len(pairs)} pairs")
    _summary(tally, f"{judge} on {len(pairs)} pairs (rubric {criteria.digest})")


def constitution(
    principles: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="A YAML list of principles (name, critique, revision). Default: feedback/ai/principles.yaml.")] = None,
    model: Annotated[str | None, typer.Option(
        help="The model that critiques and revises: a name the engine serves. Default: the base model "
             "(<FLYWHEEL_REGISTERED_MODEL>-base).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most answers revised this run.")] = 100,
    max_tokens: Annotated[int, typer.Option(
        min=1, help="Longest critique and revision, in tokens; a revision cut off there is not used.")] = 256,
    concurrency: Annotated[int, CONCURRENCY] = 8,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Have the model critique stored answers against a principle and revise them: (revision, original) pairs.

    Newest answers first, one per prompt, each once. The pairs are stored through Kafka and the worker with
    source=constitution (FLYWHEEL_FILTER_CONSTITUTION_WEIGHT), for DPO, ORPO and the reward model. Revisions that
    are empty, unchanged, cut off or failed are skipped.
    """
    from feedback.ai.constitution import DEFAULT_PRINCIPLES, answers_to_revise, load_principles, revise

    setup_logging(verbose)
    settings = ServingSettings()
    model = model or settings.base_engine_model
    try:
        rules = load_principles(principles or DEFAULT_PRINCIPLES)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    with store_sessions()() as session:
        originals = answers_to_revise(session, limit)
    if not originals:
        console.print("nothing to revise: every stored answer has its revision pair")
        return
    tally = _run(settings, model, originals,
                 lambda engine, original: revise(engine, model, rules, original, max_tokens), concurrency,
                 f"revising {len(originals)} answers")
    _summary(tally, f"{model} on {len(originals)} answers ({', '.join(p.name for p in rules)})")
