"""``flywheel feedback``: quarantine review and filter measurement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from feedback.db.session import make_engine, session_factory
from feedback.settings import CommonSettings
from feedback.simulation.report import Report, measure
from flywheel.cli.common import console, fail

app = typer.Typer(help="Feedback: quarantine review and filter measurement.", no_args_is_help=True)


@app.command()
def report(
    truth: Annotated[Path, typer.Option("--truth", exists=True, dir_okay=False, help="From flywheel simulate.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: per user type, and overall.")] = False,
    wait: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for events not yet stored.")] = 0.0,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 unless adversarial recall and honest false positives meet the targets.")] = False,
    min_recall: Annotated[float, typer.Option(help="Least share of adversarial events quarantined.")] = 0.95,
    max_honest_fp: Annotated[float, typer.Option(help="Largest share of honest events quarantined.")] = 0.02,
) -> None:
    """Per user type of a simulation: events sent and the share the filters quarantined."""
    sessions = session_factory(make_engine(CommonSettings().resolved_database_url))
    result = measure(truth, sessions, wait)
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        _print(result)
    if check and not result.passes(min_recall, max_honest_fp):
        fail(f"below target: adversarial recall must be >= {min_recall:.0%}, "
             f"honest false positives <= {max_honest_fp:.0%}")


def _print(result: Report) -> None:
    table = Table("user type", "events", "accepted", "quarantined", "pending", "share quarantined", "top reasons")
    for user_type, figures in result.by_type.items():
        label = f"{user_type} (adversarial)" if figures.adversarial else user_type
        reasons = ", ".join(f"{reason} {n}" for reason, n in figures.reasons.most_common(3))
        table.add_row(label, str(figures.events), str(figures.accepted), str(figures.quarantined),
                      str(figures.pending), f"{figures.share_quarantined:.1%}", reasons)
        if figures.poisoned:
            table.add_row("  of which poisoned", str(figures.poisoned), "", str(figures.poisoned_quarantined), "",
                          f"{figures.poisoned_quarantined / figures.poisoned:.1%}", "")
    console.print(table)
    console.print(f"adversarial recall: {_percent(result.adversarial_recall)}   "
                  f"honest false positives: {_percent(result.honest_false_positive)}")
    if result.pending:
        console.print(f"[yellow]{result.pending} events are not stored yet[/]: the worker is behind; "
                      "rerun with --wait SECONDS for final figures")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
