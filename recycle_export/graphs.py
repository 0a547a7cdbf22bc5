"""The two graphs as torch modules in the contract's input and output order, the example
inputs that tracing and validation share, and the export dtypes. The exporter traces these
modules; the validator runs them as the reference."""

from __future__ import annotations

import torch
from torch import nn

from recycle_export.model import RecycleGPT
from runtime import contract as C

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _flat(present) -> list[torch.Tensor]:
    return [t for kv in present for t in kv]


class FullStepGraph(nn.Module):
    """full_step.onnx: inputs and outputs in the contract's order."""

    def __init__(self, model: RecycleGPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, num_logits, *past):
        out = self.model.base_step(input_ids, position_ids, attention_mask, _pairs(past), num_logits[0])
        return (out.logits, out.hidden, *_flat(out.present))


class RecycleStepGraph(nn.Module):
    """recycle_step.onnx: inputs and outputs in the contract's order."""

    def __init__(self, model: RecycleGPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, hidden_states, position_ids, attention_mask, num_logits, *past):
        out = self.model.recycle_step(input_ids, hidden_states, position_ids, attention_mask,
                                      _pairs(past), num_logits[0])
        return (out.logits, out.hidden, *_flat(out.present))


def graph_module(model: RecycleGPT, name: str) -> nn.Module:
    return {C.FULL_STEP: FullStepGraph, C.RECYCLE_STEP: RecycleStepGraph}[name](model).eval()


def example_inputs(spec: C.GraphContract, sizes: dict[str, int], dtype: torch.dtype,
                   vocab_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Inputs for every tensor of the contract, with symbolic dimensions set from `sizes`
    (batch, new, past, num_logits). Positions continue the past; the mask is all ones."""
    batch, new, past = sizes[C.BATCH], sizes[C.NEW], sizes[C.PAST]
    dims = {**sizes, C.TOTAL: past + new}
    tensors = []
    for t in spec.inputs:
        shape = [dims[d] if isinstance(d, str) else d for d in t.shape]
        if t.name == C.INPUT_IDS:
            tensors.append(torch.randint(0, vocab_size, shape, generator=gen))
        elif t.name == C.POSITION_IDS:
            tensors.append(torch.arange(past, past + new).repeat(batch, 1))
        elif t.name == C.ATTENTION_MASK:
            tensors.append(torch.ones(shape, dtype=torch.long))
        elif t.name == C.NUM_LOGITS_INPUT:
            tensors.append(torch.tensor([sizes[C.NUM_LOGITS]]))
        else:  # hidden states and KV
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
    return tensors
