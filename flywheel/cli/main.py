"""``flywheel``: one entry point for the whole loop."""

from __future__ import annotations

import typer

from flywheel.cli import apps, db, demo, feedback, machine, models, scorer, services, simulate, train

app = typer.Typer(help="Flywheel: an online RLHF feedback loop.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
app.add_typer(apps.app, name="apps")
app.add_typer(db.app, name="db")
app.add_typer(feedback.app, name="feedback")
app.add_typer(models.app, name="models")
app.command("up")(services.up)
app.command("serve")(services.serve)
app.command("worker")(services.worker)
app.command("scorer")(scorer.scorer)
app.command("train")(train.train)
app.command("label")(machine.label)
app.command("constitution")(machine.constitution)
app.command("simulate")(simulate.simulate)
app.command("demo")(demo.demo)
app.command("eval")(demo.evaluate)
app.command("demo-report")(demo.redraw)
