"""A vLLM plugin that makes LoRA serving on the CPU build about as fast as the base model.

vLLM's CPU LoRA path (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``) gathers a
copy of the adapter's matrix *for every token* (``weights[indices]``) and multiplies token by
token (``einsum("bi, boi -> bo")``). In a prefill of 640 tokens that is 15 ms per adapted
layer against 0.6 ms for the base layer's own matmul, and the embedded engine served an
adapter at a third of the base model's rate (SmolLM2-135M, r=8 on q/k/v/o: 66 against
199 tok/s). A batch holds one or two adapters, never one per token, so this module
multiplies each adapter's rows at once (one matmul per adapter present) and puts these
functions in place of the six ``PunicaWrapperCPU`` uses. The results equal vLLM's own
(``tests/test_vllm_cpu_lora.py``); ``tests.bench.bench_engine_lora`` measures
the gain in the same run.

One difference, on purpose: a token whose index is -1 ("no adapter": base-model requests
batched beside adapter requests) gets no adapter contribution. vLLM's torch ops index the
weights with -1, i.e. apply the *last* adapter slot to base-model tokens, where its GPU kernels
skip them; skipping is what the index means.

Registered under vLLM's ``vllm.general_plugins`` entry point (``pyproject.toml``), so vLLM
loads it in its engine and worker processes. It only touches ``PunicaWrapperCPU``: with a
GPU build nothing it patches is used.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def _per_adapter(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """``inputs[t] @ weights[indices[t]].T`` for every token t, with one matmul per adapter in the batch."""
    if weights.dim() == 4:  # (slots, 1, out, in)
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    first = int(indices[0]) if indices.numel() else -1
    if first >= 0 and bool((indices == first).all()):  # the usual batch: every token on one adapter
        return x @ weights[first].to(dtype).T
    out = x.new_zeros(x.shape[0], weights.shape[1])
    for slot in indices.unique().tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = x[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = _per_adapter(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # As vLLM's: one row of outputs updates only the first row; adapter and model may pad differently.
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    outputs = _per_adapter(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, scaling: float) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, tokens, scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, add_inputs: bool = False) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, tokens, add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                      batches: int, max_seq_length: int, token_nums: int, slice_offset: int, slice_size: int,
                      add_inputs: bool = False) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, tokens, slice_offset, slice_size, add_inputs)


OPS = {f.__name__: f for f in (bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink, sgmv_expand,
                               sgmv_expand_slice)}


def register() -> None:
    """vLLM's plugin hook: replace the CPU punica wrapper's ops (a no-op where that module is absent)."""
    try:
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return
    for name, op in OPS.items():
        setattr(punica_cpu, name, op)
    logger.info("flywheel: per-adapter LoRA ops in place of vLLM's per-token CPU ops")
