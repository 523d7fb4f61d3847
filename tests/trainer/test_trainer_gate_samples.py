"""The gates' sampled answers on a tiny model: one seed draws one random stream, so two policies sampled with it
differ by the policies alone, and sampling is not greedy decoding."""

from __future__ import annotations

from pathlib import Path

from trainer.gates import generate

PROMPTS = [[{"role": "user", "content": f"question number {i} about pears"}] for i in range(3)] * 2


def test_sampled_answers_follow_the_seed_and_greedy_ones_do_not_sample(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))

    def sampled(seed: int) -> list[list[int]]:
        return generate(model, tokenizer, PROMPTS, 12, temperature=1.0, seed=seed).ids

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)
    greedy = generate(model, tokenizer, PROMPTS, 12).ids
    assert greedy == generate(model, tokenizer, PROMPTS, 12).ids
    assert greedy[:3] == greedy[3:]  # the same prompt asked twice: greedy gives one answer
    assert sampled(7)[:3] != sampled(7)[3:]  # sampled, two draws


def test_sampling_leaves_the_callers_random_stream_as_it_was(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    generate(model, tokenizer, PROMPTS, 12, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(4), expected)
