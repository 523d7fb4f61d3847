"""Scoring answers in right-padded batches on a tiny model gives the one-answer-at-a-time figures: the KL to the
base (and an adapter that moves the model gives KL > 0), and the answers' log-probs behind held-out accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.drift import kl_to_base
from trainer.gates import Answers, mean_token_kl
from trainer.policy import completion_logps

PROMPTS = [[{"role": "user", "content": f"question number {i} about {'apples ' * i}"}] for i in range(5)]
ANSWERS = ["Yes.", "A much longer answer with several words in it.", "", "1. one\n2. two", "Paris is the capital."]


@pytest.fixture
def adapter(tiny_model: Path, tmp_path: Path) -> Path:
    """A LoRA adapter with random weights (``init_lora_weights=False``), so it changes the model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model)),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "adapter"))
    return tmp_path / "adapter"


def test_batched_kl_equals_one_answer_at_a_time(tiny_model: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32),
                                      str(adapter))
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ANSWERS]
    answers = Answers(ids, ANSWERS)
    one = mean_token_kl(model, tokenizer, PROMPTS, answers, reference=lambda m: m.disable_adapter(), batch_size=1)
    batched = mean_token_kl(model, tokenizer, PROMPTS, answers, reference=lambda m: m.disable_adapter(),
                            batch_size=16)
    assert one > 0
    assert batched == pytest.approx(one, rel=1e-4)


def test_kl_to_base_is_zero_for_the_base_and_positive_for_an_adapter(tiny_model: Path, adapter: Path) -> None:
    assert kl_to_base(tiny_model, None, PROMPTS, ANSWERS) == 0.0
    assert kl_to_base(tiny_model, adapter, PROMPTS, ANSWERS) > 0


def test_batched_log_probs_equal_one_answer_at_a_time(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    items = list(zip(PROMPTS, ANSWERS, strict=True))
    one = completion_logps(model, tokenizer, items, max_length=128, batch_size=1)
    batched = completion_logps(model, tokenizer, items, max_length=128, batch_size=16)
    assert all(logp < 0 for logp, answer in zip(one, ANSWERS, strict=True) if answer)
    assert batched == pytest.approx(one, rel=1e-4)
    truncated = completion_logps(model, tokenizer, items, max_length=12, batch_size=16)
    assert truncated == pytest.approx(completion_logps(model, tokenizer, items, max_length=12, batch_size=1), rel=1e-4)
