"""ORPO on preference pairs: TRL's experimental ORPOTrainer on the champion, with no reference model.

ORPO (Hong et al. 2024) adds to the chosen answers' NLL a term that raises the odds of the
chosen answer over the rejected one, weighted by lambda (``TrainConfig.orpo_lambda``). It
needs no reference policy, so a step is one forward pass per answer where DPO needs two:
cheaper, and the NLL keeps what users chose likely (what ``rpo_alpha`` adds to DPO). It learns
from the same pairs as DPO. Feedback weights enter by
``resample_by_weight`` (ORPOTrainer has no per-example weight).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.pairs import PreferencePair, resample_by_weight
from trainer.policy import ProgressFn, common_args, report_progress


def orpo_trainer(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    train: list[PreferencePair],
    config: TrainConfig,
    output_dir: Path,
    progress: ProgressFn | None = None,
) -> Any:
    """A ready ORPOTrainer over the weighted training pairs; ``.train()`` runs it."""
    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO lives in trl.experimental, which warns on import
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    examples = resample_by_weight(train, config.seed)
    args = ORPOConfig(
        **common_args(config, output_dir, quiet=progress is not None),
        beta=config.orpo_lambda,
        max_length=config.max_length,
    )
    trainer = ORPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([p.to_trl() for p in examples]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return report_progress(trainer, progress)
