"""``flywheel simulate``: labelled traffic against a running gateway, with its ground truth."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.cli.common import console, fail
from flywheel.simulation.runner import GatewayRejected, run_scenario
from flywheel.simulation.scenario import ScenarioError, load_scenario, with_overrides
from flywheel.simulation.tastes import TASTES
from flywheel.simulation.truth import USER_TYPES, TruthWriter
from serving.settings import ServingSettings


def simulate(
    scenario: Annotated[str, typer.Argument(
        help="A scenario YAML file, or a shipped scenario: baseline, campaign, slow_attacker, mixed.")],
    truth: Annotated[Path, typer.Option("--truth", help="Where to write the ground truth, one JSON line per event.")],
    key: Annotated[str, typer.Option(envvar="FLYWHEEL_KEY", help="An app's API key (env FLYWHEEL_KEY).")],
    gateway: Annotated[str | None, typer.Option(
        help="Gateway URL. Default: http://FLYWHEEL_HOST:FLYWHEEL_PORT.")] = None,
    time_scale: Annotated[float | None, typer.Option(
        min=0.0001, help="Override the scenario's time scale (0.1 = ten times faster reading and pauses).")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    taste: Annotated[str | None, typer.Option(
        help=f"Override the honest users' hidden taste: {', '.join(TASTES)}.")] = None,
) -> None:
    """Drive the gateway with a scenario's simulated users; write what each vote really was to --truth."""
    try:
        plan = load_scenario(scenario)
    except ScenarioError as exc:
        fail(str(exc))
    try:
        plan = with_overrides(plan, time_scale=time_scale, seed=seed, taste=taste)
    except ScenarioError as exc:
        fail(str(exc))
    settings = ServingSettings()
    url = (gateway or f"http://{settings.host}:{settings.port}").rstrip("/")
    console.print(f"scenario [bold]{plan.name}[/]: {plan.planned_events} events from "
                  f"{sum(g.count for g in plan.groups)} users, taste {plan.preference.taste}, "
                  f"time scale {plan.time_scale}, against {url}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, TruthWriter(truth) as writer:
        task = progress.add_task("votes", total=plan.planned_events)
        try:
            summary = asyncio.run(run_scenario(plan, url, key, writer, model=settings.public_model,
                                               on_event=lambda: progress.advance(task)))
        except GatewayRejected as exc:
            fail(f"the gateway refused a request, stopping: {exc}")
    table = Table("user type", "events sent", "answers left unvoted", "failed")
    for user_type in (t for t in USER_TYPES if t in summary.sent or t in summary.failed or t in summary.unvoted):
        table.add_row(user_type, str(summary.sent[user_type]), str(summary.unvoted[user_type]),
                      str(summary.failed[user_type]))
    console.print(table)
    console.print(f"{sum(summary.sent.values())} events in {summary.seconds:.0f} s; truth in {truth}. "
                  f"Next: flywheel feedback report --truth {truth} --wait 60")
