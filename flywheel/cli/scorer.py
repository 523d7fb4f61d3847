"""``flywheel scorer``: the current reward model scores answers as they are stored, beside the worker."""

from __future__ import annotations

import threading

import typer

from flywheel.cli.common import setup_logging


def scorer(
    batch: int = typer.Option(64, help="Answers scored per step."),
    poll: float = typer.Option(2.0, help="Seconds to wait when nothing is left to score."),
    max_age: float = typer.Option(7 * 24 * 3600, help="Seconds: older answers can no longer get votes (expired)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score new completions with the reward model whose scores reward_scores holds (the last round's), writing
    reward_scores rows the worker's filters read. Ctrl-C stops it."""
    from feedback.db.session import make_engine, session_factory, upgrade
    from trainer.config import TrainerSettings
    from trainer.scorer import Scorer

    setup_logging(verbose)
    settings = TrainerSettings()
    upgrade(settings.resolved_database_url)
    service = Scorer(settings, session_factory(make_engine(settings.resolved_database_url)), batch, max_age)
    stop = threading.Event()
    try:
        service.run(stop, poll)
    except KeyboardInterrupt:
        stop.set()
    finally:
        service.close()
