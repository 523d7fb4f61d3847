"""``flywheel models``: which version serves users (champion, canary), and every move of that choice."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from feedback.db.session import make_engine, session_factory, upgrade
from feedback.settings import CommonSettings
from flywheel.cli.common import console, default_actor, fail
from registry.canary_judge import CanaryJudge
from registry.live import Proportion, last_answer
from registry.model_versions import LOAD_ERROR_TAG
from registry.promotion import Promotion, RegistryError
from serving.canary import version_for
from serving.settings import ServingSettings

app = typer.Typer(help="Model versions and the champion alias.", no_args_is_help=True)

ACTOR = typer.Option(None, help="Who is acting, for the audit trail. Default: cli:<login>.")
REASON = typer.Option(None, help="Why, for the audit trail.")
MODEL_DIR = typer.Argument(..., help="An HF model folder (config.json, weights, tokenizer).")


def _registry() -> Promotion:
    settings = CommonSettings()
    upgrade(settings.resolved_database_url)
    factory = session_factory(make_engine(settings.resolved_database_url))
    return Promotion(settings.resolved_mlflow_uri, settings.registered_model, factory)


@app.command("list")
def list_() -> None:
    """Every registered version: aliases, held-out metrics, and live numbers from accepted feedback.

    thumbs up: share of up among accepted thumbs on its answers; vs champion: its wins over decisive
    picks against the current champion's answers in the same pair; both with 95 % Wilson intervals.
    """
    table = Table("version", "aliases", "parent", "held-out acc", "champion acc", "answers", "thumbs up",
                  "vs champion", "mean chars", "mean ms", "created", "run", "load error")
    for info in _registry().live_versions():
        live, meeting = info.live, info.against_champion
        table.add_row(
            info.version, ", ".join(info.aliases), info.tags.get("parent_version", ""),
            _metric(info.metrics, "heldout_accuracy"), _metric(info.metrics, "champion_heldout_accuracy"),
            str(live.answers) if live else "", _share(live.thumbs_up) if live else "",
            _share(meeting.win_rate) if meeting else "",
            f"{live.mean_answer_chars:.0f}" if live and live.mean_answer_chars is not None else "",
            f"{live.mean_latency_ms:.0f}" if live and live.mean_latency_ms is not None else "",
            f"{info.created_at:%Y-%m-%d %H:%M}", (info.run_id or "")[:8], info.tags.get(LOAD_ERROR_TAG, ""),
        )
    console.print(table)


def _share(proportion: Proportion) -> str:
    """``0.71 (0.65-0.77) n=212``: the estimate, its interval and the number of votes."""
    if proportion.estimate is None or proportion.low is None or proportion.high is None:
        return ""
    return f"{proportion.estimate:.2f} ({proportion.low:.2f}-{proportion.high:.2f}) n={proportion.trials}"


def _metric(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.3f}" if name in metrics else ""


@app.command()
def register(model_dir: Path = MODEL_DIR, actor: str | None = ACTOR, reason: str | None = REASON) -> None:
    """Register MODEL_DIR as a new version that is a full model, not a LoRA adapter (audited; moves no alias).

    Promoted or made canary, it is swapped blue/green: the gateway starts an engine of its own for
    it, routes to it once its health check passes, and stops the old one after its last request.
    """
    from trainer.config import TrainerSettings
    from trainer.registry import Registry

    registry = _registry()
    experiment = Registry(TrainerSettings(), registry.factory).experiment_id()  # where trained versions' runs live
    try:
        version = registry.register_full_model(experiment, model_dir.resolve(), actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"version [bold]{version}[/] registered: the full model from {model_dir} "
                  f"(`flywheel models promote {version}` or `canary {version}` to serve it)")


@app.command()
def promote(version: str = typer.Argument(..., help="The version to make champion."),
            actor: str | None = ACTOR, reason: str | None = REASON) -> None:
    """Make VERSION the champion; the gateway switches to it within seconds, without a restart."""
    try:
        _registry().promote(version, actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"version [bold]{version}[/] is champion")


@app.command()
def rollback(actor: str | None = ACTOR, reason: str | None = REASON) -> None:
    """Return the champion to the version it held before the current one."""
    try:
        version = _registry().rollback(actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"rolled back: version [bold]{version}[/] is champion")


@app.command()
def canary(
    version: str | None = typer.Argument(None, help="The version to send a share of end users to."),
    percent: float | None = typer.Option(None, help="The percent of end users (sticky per user), above 0 up to 100."),
    stop: bool = typer.Option(False, "--stop", help="End the running canary: every user back on the champion."),
    actor: str | None = ACTOR, reason: str | None = REASON,
) -> None:
    """Send PERCENT % of end users to VERSION (or change the canary's percent); --stop ends it; alone: its status."""
    if version is None and not stop and percent is None:
        _canary_status()
        return
    if stop == (version is not None) or (version is not None and percent is None):
        fail("give VERSION --percent P to start or change a canary, or --stop alone to end it")
    try:
        if stop:
            ended = _registry().stop_canary(actor or default_actor(), reason)
            console.print(f"canary of version [bold]{ended}[/] stopped: every user is on the champion")
            return
        assert version is not None and percent is not None  # checked above
        started = _registry().start_canary(version, percent, actor or default_actor(), reason)
    except RegistryError as exc:
        fail(str(exc))
    console.print(f"version [bold]{started.version}[/] is the canary for {started.percent:g} % of end users "
                  f"(since {started.since:%Y-%m-%d %H:%M:%S} UTC)")


def _canary_status() -> None:
    """The running canary, its evidence since it began, and what the rule (FLYWHEEL_CANARY_RULE) decides on it."""
    looked = CanaryJudge(_registry(), ServingSettings().canary_rule).look()
    if looked is None:
        console.print("no canary is running")
        return
    canary, decision = looked
    seen = decision.evidence
    console.print(f"canary: version [bold]{canary.version}[/] for {canary.percent:g} % of end users since "
                  f"{canary.since:%Y-%m-%d %H:%M:%S} UTC, against champion {seen['champion']}")
    console.print(f"picks for it {seen['wins']}, against {seen['losses']}; thumbs up {seen['canary_ups']}/"
                  f"{seen['canary_thumbs']} (champion {seen['champion_ups']}/{seen['champion_thumbs']})")
    console.print(f"the rule says: [bold]{decision.action}[/] ({decision.reason})")


@app.command()
def history(
    limit: int = typer.Option(20, help="How many moves, newest first."),
    at: str | None = typer.Option(None, help="Instead: which versions served at this time (ISO 8601, e.g. "
                                             "2026-12-03T14:05:00Z; without a zone: UTC)."),
    user: str | None = typer.Option(None, help="With --at: which version answered this end user."),
) -> None:
    """Every alias move: when, what, from which version to which, who and why; --at T: what served at T."""
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            fail(f"--at {at!r} is not an ISO 8601 time (e.g. 2026-12-03T14:05:00Z)")
        _serving_at(moment, user)
        return
    if user is not None:
        fail("--user goes with --at")
    table = Table("when", "alias", "action", "from", "to", "percent", "actor", "reason")
    for move in _registry().history(limit):
        table.add_row(f"{move.at:%Y-%m-%d %H:%M:%S}", move.alias, move.action, move.from_version or "",
                      move.to_version, "" if move.percent is None else f"{move.percent:g} %", move.actor,
                      move.reason or "")
    console.print(table)


def _serving_at(at: datetime, user: str | None) -> None:
    registry = _registry()
    then = registry.serving_at(at if at.tzinfo is not None else at.replace(tzinfo=UTC))
    console.print(f"at {then.at:%Y-%m-%d %H:%M:%S} UTC")
    if then.champion is None:
        console.print("no champion yet: the audit trail has no move before that time")
        return
    console.print(f"champion: version [bold]{then.champion}[/] (since {then.champion_since:%Y-%m-%d %H:%M:%S})")
    if then.canary is not None:
        console.print(f"canary: version [bold]{then.canary}[/] for {then.canary_percent:g} % of end users "
                      f"(since {then.canary_since:%Y-%m-%d %H:%M:%S})")
    else:
        console.print("canary: none")
    if user is not None:
        console.print(f"user {user!r} was answered by version "
                      f"[bold]{version_for(user, then.champion, then.canary, then.canary_percent)}[/]")
        with registry.factory() as session:
            served = last_answer(session, user, then.at)
        if served is not None:
            console.print(f"their last recorded answer by then: {served.response_id} (app {served.app_id}) from "
                          f"version {served.model_version} at {served.created_at:%Y-%m-%d %H:%M:%S}")
