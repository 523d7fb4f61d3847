"""The training reference is the one ``TrainConfig.reference`` names, and the gates still see the champion.

Continued from a trained adapter, TRL holds the policy near a copy of that adapter; with
``reference="base"`` (the default) every round is held near the base model instead, so rounds
cannot add their drift up. Checked on TRL's own reference log-probs, on a tiny model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer.config import TrainConfig
from trainer.dpo import dpo_trainer
from trainer.pairs import PreferencePair
from trainer.policy import candidate_view, champion_view, hold_near, keep_champion_adapter, lora_config

PROMPT = [{"role": "user", "content": "Name a colour."}]
PAIRS = [PreferencePair("h", PROMPT, "Blue.", "I do not know any colours at all.", "a", "b", "pairwise", (), 1.0),
         PreferencePair("h", PROMPT, "Red, like a tomato.", "Colours?", "c", "d", "pairwise", (), 1.0)]


def trained_champion(tiny_model: Path) -> Any:
    """A PeftModel whose adapter is far from zero: a champion some earlier round trained."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model: Any = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model)), lora_config(TrainConfig()))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def reference_logps(trainer: Any) -> Any:
    """TRL's own reference log-probs of the chosen and rejected answers of the first batch."""
    import torch

    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    return torch.cat([chosen, rejected])


@pytest.mark.parametrize("reference", ["base", "champion"])
def test_the_training_reference_is_the_configured_one(tiny_model: Path, tmp_path: Path, reference: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    config = TrainConfig(reference=reference, batch_size=2, max_steps=1, reward_model=False)  # type: ignore[arg-type]
    bare = AutoModelForCausalLM.from_pretrained(str(tiny_model))  # round 1: a fresh LoRA, reference the base
    base = reference_logps(dpo_trainer(bare, tokenizer, lora_config(config), PAIRS, config, tmp_path / "fresh"))

    model = keep_champion_adapter(trained_champion(tiny_model))
    model.eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        champion = model(input_ids=ids).logits
    trainer = dpo_trainer(model, tokenizer, None, PAIRS, config, tmp_path / "continued")
    hold_near(trainer.model, config)
    held_near = reference_logps(trainer)

    assert torch.allclose(held_near, base, atol=1e-5) == (reference == "base")
    with torch.no_grad():  # whichever the reference, the gates compare the candidate with its champion
        for name, param in model.named_parameters():
            if "lora_B.default" in name:
                param.add_(1.0)  # a round of training moves the trained adapter only
        with champion_view(model):
            assert torch.allclose(model(input_ids=ids).logits, champion)
        with candidate_view(model):
            assert not torch.allclose(model(input_ids=ids).logits, champion)
