"""The NLL term on chosen answers (``rpo_alpha``) goes into TRL's DPO loss at its weight."""

from __future__ import annotations

from pathlib import Path

from trainer.config import TrainConfig
from trainer.dpo import dpo_args


def test_dpo_args_add_the_chosen_nll_at_its_weight(tmp_path: Path) -> None:
    rpo = dpo_args(TrainConfig(rpo_alpha=0.5), tmp_path, quiet=True)
    assert rpo.loss_type == ["sigmoid", "sft"] and rpo.loss_weights == [1.0, 0.5]
    plain = dpo_args(TrainConfig(rpo_alpha=0), tmp_path, quiet=True)
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights == [1.0]
