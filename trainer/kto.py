"""KTO on single rated answers: TRL's KTOTrainer on the champion, weighted by the label balance.

KTO needs no partner answer, so thumbs on answers that never met an opposite rating still
teach. Its two class weights are set from the snapshot's balance so that
``desirable_weight * n_desirable == undesirable_weight * n_undesirable``: the ratio 1 sits
inside the range the KTO paper recommends ([1, 4/3], eq. 8), and a flood of thumbs-up cannot
drown the rarer thumbs-down. Feedback weights enter by ``resample_by_weight``, before the
balance is counted, so the balance is that of the examples the trainer sees.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.pairs import RatedAnswer, resample_by_weight
from trainer.policy import ProgressFn, common_args, report_progress


def class_weights(examples: list[RatedAnswer]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): the rarer class is up-weighted, the commoner keeps 1."""
    desirable = sum(e.desirable for e in examples)
    undesirable = len(examples) - desirable
    if desirable == 0 or undesirable == 0:
        return 1.0, 1.0
    if desirable < undesirable:
        return undesirable / desirable, 1.0
    return 1.0, desirable / undesirable


def kto_trainer(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    train: list[RatedAnswer],
    config: TrainConfig,
    output_dir: Path,
    progress: ProgressFn | None = None,
) -> Any:
    """A ready KTOTrainer over the weighted rated answers; ``.train()`` runs it."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    examples = resample_by_weight(train, config.seed)
    # KTOTrainer samples sequentially (its KL term pairs neighbours in a batch), so mix prompts and labels here.
    random.Random(config.seed).shuffle(examples)
    desirable_weight, undesirable_weight = class_weights(examples)
    args = KTOConfig(
        **common_args(config, output_dir, quiet=progress is not None),
        beta=config.beta,
        max_length=config.max_length,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([e.to_trl() for e in examples]),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return report_progress(trainer, progress)
