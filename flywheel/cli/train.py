"""``flywheel train``: one training round from the accepted feedback, or one every ``--every DURATION``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from flywheel.cli.common import console, fail, setup_logging
from trainer.config import TrainConfig

_DEFAULTS = TrainConfig()  # the options' defaults are the config's, never retyped

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


def train(
    min_pairs: int = typer.Option(_DEFAULTS.min_pairs,
        help="Skip the round below this many examples (pairs; rated answers for KTO)."),
    algorithm: str = typer.Option(_DEFAULTS.algorithm, help="auto (by what the feedback holds), dpo or kto."),
    loss_type: str = typer.Option(_DEFAULTS.loss_type,
        help="DPO loss: sigmoid (with --label-smoothing: cDPO) or robust."),
    label_smoothing: float = typer.Option(_DEFAULTS.label_smoothing,
        help="Assumed share of flipped labels, for cDPO or robust DPO."),
    epochs: float = typer.Option(_DEFAULTS.epochs, help="Passes over the training examples."),
    max_steps: int = typer.Option(_DEFAULTS.max_steps, help="Optimizer steps; overrides --epochs when > 0."),
    learning_rate: float = typer.Option(_DEFAULTS.learning_rate, help="AdamW learning rate of the LoRA weights."),
    beta: float = typer.Option(_DEFAULTS.beta, help="DPO/KTO beta: how far the policy may move from the reference."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size),
    lora_r: int = typer.Option(_DEFAULTS.lora_r,
        help="LoRA rank (at most the engine's FLYWHEEL_ENGINE_MAX_LORA_RANK)."),
    reward_model: bool = typer.Option(_DEFAULTS.reward_model,
        help="Train the reward model that judges the win-rate gate."),
    reward_ensemble: int = typer.Option(_DEFAULTS.reward_ensemble,
        help="Reward models in the ensemble; their spread is the uncertainty."),
    gates: bool = typer.Option(_DEFAULTS.gates, help="Run the gates; without them no candidate becomes challenger."),
    gate_prompts: int = typer.Option(_DEFAULTS.gate_prompts,
        help="Held-out prompts both policies answer for the gates."),
    every: str = typer.Option(None, "--every", help="Run periodically, e.g. 30m, 6h, 1d; Ctrl-C stops."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a policy (DPO or KTO, LoRA) from the champion, gate it, register it; challenger only if every gate passes.

    Gate thresholds come from FLYWHEEL_GATE_* settings. With --every, a cycle is skipped when another run holds
    the trainer lock or fewer than FLYWHEEL_TRAIN_MIN_NEW_FEEDBACK events arrived since the last trained version.
    """
    from trainer.config import ConfigError, TrainConfig, TrainerSettings
    from trainer.policy import rich_progress
    from trainer.round import train_once
    from trainer.schedule import parse_duration, run_every

    setup_logging(verbose)
    settings = TrainerSettings()
    try:
        config = TrainConfig(
            min_pairs=min_pairs, algorithm=algorithm, loss_type=loss_type, label_smoothing=label_smoothing,  # type: ignore[arg-type]
            epochs=epochs, max_steps=max_steps, learning_rate=learning_rate, beta=beta, batch_size=batch_size,
            lora_r=lora_r, reward_model=reward_model, reward_ensemble=reward_ensemble, gates=gates,
            gate_prompts=gate_prompts,
        ).validate()
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
