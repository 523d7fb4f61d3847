"""``flywheel train``: one training round from the accepted feedback, or one every ``--every DURATION``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from flywheel.cli.common import console, fail, setup_logging
from flywheel.cli.config_options import config_options
from trainer.config import TrainConfig

if TYPE_CHECKING:
    from trainer.round import TrainResult


def _show(result: TrainResult) -> None:
    """The outcome in one line, then the snapshot check or the gate report as a table."""
    from rich.table import Table

    if result.status == "skipped":
        console.print(f"[yellow]skipped:[/] {result.message}")
        return
    colour = "red" if result.status == "rejected" or (result.gates and not result.gates.passed) else "green"
    console.print(f"[{colour}]{result.status}:[/] {result.message}")
    if result.status == "rejected" and result.validation:
        table = Table("snapshot check", "result", "observed", "expected", title=f"snapshot (run {result.run_id})")
        for check in result.validation.checks:
            table.add_row(check.name, "pass" if check.passed else "[red]FAIL[/]", str(check.observed)[:60],
                          check.expected)
        console.print(table)
    if result.gates:
        table = Table("gate", "result", "value", "threshold", "detail", title=f"gate report (run {result.run_id})")
        style = {"passed": "[green]pass[/]", "failed": "[red]FAIL[/]", "skipped": "[yellow]skipped[/]"}
        for gate in result.gates.gates:
            table.add_row(gate.name, style[gate.status], f"{gate.value:.3f}", gate.threshold, gate.detail)
        console.print(table)
    if result.cpu_seconds:
        wall = sum(result.seconds[stage] for stage in result.cpu_seconds)  # the stages, not the derived per_step
        console.print(f"{wall / 60:.1f} min wall, {sum(result.cpu_seconds.values()) / 60:.1f} CPU min "
                      f"({', '.join(f'{k} {v / 60:.1f}' for k, v in result.cpu_seconds.items())})")


@config_options(TrainConfig)
def train(
    every: str = typer.Option(None, "--every", help="Run periodically, e.g. 30m, 6h, 1d; Ctrl-C stops."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    *,
    config: TrainConfig,
) -> None:
    """Train a LoRA policy (DPO/KTO/ORPO/RLOO/GRPO) from the champion, gate it, register it; challenger if all pass.

    Gate thresholds come from FLYWHEEL_GATE_* settings. With --every, a cycle is skipped when another run holds
    the trainer lock or fewer than FLYWHEEL_TRAIN_MIN_NEW_FEEDBACK events arrived since the last trained version.
    """
    from trainer.config import ConfigError, TrainerSettings
    from trainer.policy import rich_progress
    from trainer.round import train_once
    from trainer.schedule import parse_duration, run_every

    setup_logging(verbose)
    settings = TrainerSettings()
    try:
        interval = parse_duration(every) if every else None
        min_new = settings.train_min_new_feedback if interval else 0

        def cycle() -> None:
            with rich_progress() as progress:
                result = train_once(settings, config, progress, min_new_feedback=min_new)
            _show(result)

        if interval is None:
            cycle()
            return
        console.print(f"training every {every}; Ctrl-C stops")
        try:
            run_every(interval, cycle)
        except KeyboardInterrupt:
            console.print("stopped")
    except ConfigError as exc:
        fail(str(exc))
