"""DPO on preference pairs: TRL's DPOTrainer on the champion, with the robust-loss options.

Residual label noise (votes the filters could not catch) gets two TRL options:
- ``loss_type="sigmoid"`` with ``label_smoothing=ε > 0``: conservative DPO (cDPO), which
  trains towards "chosen is better with probability 1-ε" instead of certainty;
- ``loss_type="robust"`` with ``label_smoothing=ε``: robust DPO (Chowdhury et al. 2024), an
  unbiased loss under a flip rate ε.
And one against collapse: ``rpo_alpha`` adds TRL's ``"sft"`` loss (the chosen answers' mean
token NLL) at that weight (RPO, Pang et al. 2024). DPO alone can win a pair by pushing
probability off *both* answers; continued from a trained adapter, rounds of it at LoRA's
learning rate drove SmolLM2 to short strings of no words, which a length-only taste then
preferred (docs/demo.md, "the concise taste"). The NLL term keeps the chosen answers likely.
Off by default until a demo run shows what it costs the learning (issue 8).
Feedback weights enter by ``resample_by_weight`` (DPOTrainer has no per-example weight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.pairs import PreferencePair, resample_by_weight
from trainer.policy import ProgressFn, common_args, report_progress


def dpo_args(config: TrainConfig, output_dir: Path, quiet: bool) -> Any:
    from trl import DPOConfig

    losses: list[str] = [config.loss_type]
    weights = [1.0]
    if config.rpo_alpha > 0:
        losses, weights = [*losses, "sft"], [*weights, config.rpo_alpha]
    return DPOConfig(
        **common_args(config, output_dir, quiet), loss_type=losses, loss_weights=weights,
        label_smoothing=config.label_smoothing, beta=config.beta, max_length=config.max_length,
    )


def dpo_trainer(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    train: list[PreferencePair],
    config: TrainConfig,
    output_dir: Path,
    progress: ProgressFn | None = None,
) -> Any:
    """A ready DPOTrainer over the weighted training pairs; ``.train()`` runs it."""
    from datasets import Dataset
    from trl import DPOTrainer

    examples = resample_by_weight(train, config.seed)
    trainer = DPOTrainer(
        model=model,
        args=dpo_args(config, output_dir, quiet=progress is not None),
        train_dataset=Dataset.from_list([p.to_trl() for p in examples]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return report_progress(trainer, progress)
