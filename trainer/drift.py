"""How far a registered version has drifted from the base model, on answers it gave.

The demo's evaluation samples answers from each version through the serving engine and
asks here for the mean per-token KL(version || base) on them: the same exact, full-vocabulary
KL as the ``kl_base`` gate (on sampled answers instead of greedy ones), so versions of
different rounds sit on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.gates import Answers, mean_token_kl
from trainer.policy import base_view


def kl_to_base(
    base: Path, adapter: Path | None, prompts: Sequence[list[dict[str, str]]], answers: Sequence[str]
) -> float:
    """Mean per-token KL(base + ``adapter`` || base) in nats on ``answers`` to ``prompts``; 0 for the base itself."""
    if adapter is None:
        return 0.0
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(adapter))
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in answers]
    return mean_token_kl(model, tokenizer, prompts, Answers(ids, list(answers)), reference=base_view)

