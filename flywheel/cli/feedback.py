"""``flywheel feedback``: what happened to the feedback. ``quarantine`` reviews held-back events."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from feedback import quarantine
from feedback.db.session import transaction
from feedback.filters import FilterSettings
from flywheel.cli.common import console, default_actor, fail, store_sessions
from flywheel.simulation.report import Report, measure

T = TypeVar("T")

app = typer.Typer(help="Feedback: quarantine review and reports.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Quarantined feedback: list, show, release into training data, purge.",
                             no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")

ACTOR = typer.Option(None, help="Who is acting, for the audit trail. Default: cli:<login>.")
NOTE = typer.Option(None, help="Why, for the audit trail.")
APP = typer.Option(None, "--app", help="The event's app (app id), when several apps used the event id.")


def _in_store(work: Callable[[Session], T], *, write: bool = False) -> T:
    """``work`` on a store session (``write``: in one transaction, so a refusal leaves nothing half done); a
    refusal of the quarantine review ends the command with its message."""
    try:
        if write:
            with transaction(store_sessions()) as session:
                return work(session)
        with store_sessions()() as session:
            return work(session)
    except quarantine.QuarantineError as exc:
        fail(str(exc))


@quarantine_app.command("list")
def list_(
    reason: str | None = typer.Option(None, help="Only events with this reason code (e.g. too_fast)."),
    user: str | None = typer.Option(None, help="Only this end user's events."),
    app_id: int | None = typer.Option(None, "--app", help="Only this app's events (app id)."),
    limit: int = typer.Option(50, min=1, help="How many, newest first."),
) -> None:
    """Quarantined events, newest first, with their reason codes."""
    rows = _in_store(lambda session: quarantine.list_quarantined(session, reason, user, app_id, limit))
    table = Table("event", "type", "app", "user", "reasons", "created")
    for row in rows:
        table.add_row(row.event_id, row.type, str(row.app_id), row.user_id, ", ".join(row.reasons),
                      f"{row.created_at:%Y-%m-%d %H:%M:%S}")
    console.print(table)


@quarantine_app.command()
def show(event_id: str = typer.Argument(..., help="The quarantined event's id."), app_id: int | None = APP) -> None:
    """One quarantined event whole: reasons, evidence and the event as received."""
    row = _in_store(lambda session: quarantine.as_dict(quarantine.get_quarantined(session, event_id, app_id)))
    console.print_json(json.dumps(row))


@quarantine_app.command()
def release(
    event_id: str = typer.Argument(..., help="The quarantined event's id."),
    weight: float = typer.Option(1.0, help="Training weight of the released vote, in (0, 1]."),
    actor: str | None = ACTOR,
    note: str | None = NOTE,
    app_id: int | None = APP,
) -> None:
    """Move a quarantined event into the training data; the filters will not quarantine it again."""
    _in_store(lambda session: quarantine.release(session, event_id, actor or default_actor(), weight, note, app_id),
              write=True)
    console.print(f"released [bold]{event_id}[/] into the training data (weight {weight})")


@quarantine_app.command()
def purge(
    event_id: str = typer.Argument(..., help="The quarantined event's id."),
    actor: str | None = ACTOR,
    note: str | None = NOTE,
    app_id: int | None = APP,
) -> None:
    """Delete a quarantined event for good (audited; a re-delivery from Kafka stays a no-op)."""
    _in_store(lambda session: quarantine.purge(session, event_id, actor or default_actor(), note, app_id), write=True)
    console.print(f"purged [bold]{event_id}[/]")


@app.command()
def report(
    truth: Annotated[Path, typer.Option("--truth", exists=True, dir_okay=False, help="From flywheel simulate.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: per user type, and overall.")] = False,
    wait: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for events not yet stored.")] = 0.0,
    settle: Annotated[float | None, typer.Option(
        "--settle", min=0, help="Seconds to wait, once every event is stored, for the history searches' verdicts "
        "(they run up to FLYWHEEL_FILTER_SEARCH_INTERVAL_S after a vote). Default: that interval + 2 s with --wait, "
        "else 0.")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 unless adversarial recall and honest false positives meet the targets.")] = False,
    min_recall: Annotated[float, typer.Option(help="Least share of adversarial events quarantined.")] = 0.95,
    max_honest_fp: Annotated[float, typer.Option(help="Largest share of honest events quarantined.")] = 0.02,
) -> None:
    """Per user type of a simulation (flywheel simulate): events sent and the share the filters quarantined."""
    if settle is None:
        settle = FilterSettings().search_interval_s + 2 if wait else 0.0
    result = measure(truth, store_sessions(), wait, settle)
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print_report(result)
    if check and not result.passes(min_recall, max_honest_fp):
        fail(f"below target: adversarial recall must be >= {min_recall:.0%}, "
             f"honest false positives <= {max_honest_fp:.0%}")


def print_report(result: Report) -> None:
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
