"""The per-adapter LoRA ops give vLLM's own CPU ops' results, and skip base-model tokens (index -1)."""

from __future__ import annotations

import pytest
import torch

from flywheel.stack import vllm_cpu_lora as fast

reference = pytest.importorskip("vllm.lora.ops.torch_ops")

SLOTS, RANK, HIDDEN = 2, 8, 64


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator).to(torch.bfloat16)
    b = torch.randn(SLOTS, 1, 3 * HIDDEN, RANK, generator=generator).to(torch.bfloat16)
    return a, b


INDICES = {
    "one adapter": [0] * 7,
    "two adapters": [0, 1, 1, 0, 1, 0, 0],
    "second slot only": [1] * 5,
}


@pytest.mark.parametrize("indices", INDICES.values(), ids=INDICES.keys())
def test_decode_ops_equal_vllms(weights: tuple[torch.Tensor, torch.Tensor], indices: list[int]) -> None:
    a, b = weights
    index = torch.tensor(indices)
    x = torch.randn(len(indices), HIDDEN).to(torch.bfloat16)
    shrunk = {name: torch.zeros(len(indices), RANK) for name in ("vllm", "fast")}
    reference.bgmv_shrink(x, a, shrunk["vllm"], index, 0.5)
    fast.bgmv_shrink(x, a, shrunk["fast"], index, 0.5)
    torch.testing.assert_close(shrunk["fast"], shrunk["vllm"])

    for add in (True, False):
        out = {name: torch.ones(len(indices), 3 * HIDDEN, dtype=torch.bfloat16) for name in ("vllm", "fast")}
        reference.bgmv_expand(shrunk["vllm"], b, out["vllm"], index, add)
        fast.bgmv_expand(shrunk["vllm"], b, out["fast"], index, add)
        torch.testing.assert_close(out["fast"], out["vllm"])
        b_slice = b[:, :, HIDDEN: 2 * HIDDEN, :].contiguous()
        reference.bgmv_expand_slice(shrunk["vllm"], b_slice, out["vllm"], index, HIDDEN, HIDDEN, add)
        fast.bgmv_expand_slice(shrunk["vllm"], b_slice, out["fast"], index, HIDDEN, HIDDEN, add)
        torch.testing.assert_close(out["fast"], out["vllm"])


def test_prefill_ops_equal_vllms(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Prefill: one adapter index per sequence, spread over its tokens."""
    a, b = weights
    lengths, per_sequence = torch.tensor([3, 5, 2]), torch.tensor([1, 0, 1])
    tokens = int(lengths.sum())
    starts = torch.cumsum(lengths, 0) - lengths
    x = torch.randn(tokens, HIDDEN).to(torch.bfloat16)
    layout = (starts, lengths, per_sequence, 3, 5, tokens)
    shrunk = {name: torch.zeros(tokens, RANK) for name in ("vllm", "fast")}
    reference.sgmv_shrink(x, a, shrunk["vllm"], *layout, 2.0)
    fast.sgmv_shrink(x, a, shrunk["fast"], *layout, 2.0)
    torch.testing.assert_close(shrunk["fast"], shrunk["vllm"])
    out = {name: torch.zeros(tokens, 3 * HIDDEN, dtype=torch.bfloat16) for name in ("vllm", "fast")}
    reference.sgmv_expand(shrunk["vllm"], b, out["vllm"], *layout, True)
    fast.sgmv_expand(shrunk["vllm"], b, out["fast"], *layout, True)
    torch.testing.assert_close(out["fast"], out["vllm"])
    reference.sgmv_expand_slice(shrunk["vllm"], b[:, :, :HIDDEN], out["vllm"], *layout, 0, HIDDEN, True)
    fast.sgmv_expand_slice(shrunk["vllm"], b[:, :, :HIDDEN], out["fast"], *layout, 0, HIDDEN, True)
    torch.testing.assert_close(out["fast"], out["vllm"])


def test_base_model_tokens_get_no_adapter(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Index -1 is a base-model request batched beside adapter requests: its rows stay as they were."""
    a, b = weights
    index = torch.tensor([0, -1, 1, -1])
    x = torch.randn(4, HIDDEN).to(torch.bfloat16)
    shrunk = torch.full((4, RANK), 7.0)
    fast.bgmv_shrink(x, a, shrunk, index, 1.0)
    assert torch.all(shrunk[[1, 3]] == 0)
    assert torch.all(shrunk[[0, 2]] != 0)
    out = torch.ones(4, 3 * HIDDEN, dtype=torch.bfloat16)
    fast.bgmv_expand(torch.randn(4, RANK), b, out, index, True)
    assert torch.all(out[[1, 3]] == 1)
    assert not torch.all(out[[0, 2]] == 1)


def test_register_replaces_the_cpu_wrappers_ops() -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    fast.register()
    for name, op in fast.OPS.items():
        assert getattr(punica_cpu, name) is op
