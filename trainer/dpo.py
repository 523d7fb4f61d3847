"""DPO on preference pairs: TRL's DPOTrainer on the champion, with the robust-loss options.

Residual label noise (votes the filters could not catch) gets two TRL options:
- ``loss_type="sigmoid"`` with ``label_smoothing=ε > 0``: conservative DPO (cDPO), which
  trains towards "chosen is better with probability 1-ε" instead of certainty;
- ``loss_type="robust"`` with ``label_smoothing=ε``: robust DPO (Chowdhury et al. 2024), an
  unbiased loss under a flip rate ε.
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

    return DPOConfig(
        **common_args(config, output_dir, quiet), loss_type=[config.loss_type], label_smoothing=config.label_smoothing
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
