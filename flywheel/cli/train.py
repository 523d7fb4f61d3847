"""``flywheel train``: one training round from the accepted feedback."""

from __future__ import annotations

import typer

from flywheel.cli.common import console, fail, setup_logging


def train(
    min_pairs: int = typer.Option(16, help="Skip the round below this many preference pairs."),
    epochs: float = typer.Option(1.0, help="Passes over the training pairs."),
    max_steps: int = typer.Option(-1, help="Optimizer steps; overrides --epochs when > 0."),
    learning_rate: float = typer.Option(5e-5, help="AdamW learning rate of the LoRA weights."),
    beta: float = typer.Option(0.1, help="DPO beta: how far the policy may move from the reference."),
    batch_size: int = typer.Option(4),
    lora_r: int = typer.Option(8, help="LoRA rank (at most the engine's FLYWHEEL_ENGINE_MAX_LORA_RANK)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a DPO LoRA policy from the champion, register it, and mark it challenger if it wins on held-out pairs."""
    from trainer.config import ConfigError, TrainConfig, TrainerSettings
    from trainer.dpo import rich_progress, train_once

    setup_logging(verbose)
    config = TrainConfig(min_pairs=min_pairs, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
                         beta=beta, batch_size=batch_size, lora_r=lora_r)
    try:
        with rich_progress() as progress:
            result = train_once(TrainerSettings(), config, progress)
    except ConfigError as exc:
        fail(str(exc))
    if result.status == "skipped":
        console.print(f"[yellow]skipped:[/] {result.message}")
        return
    console.print(result.message)
