"""Proposed second I/O contract, "inplace-kv-v1": fixed-capacity KV buffers updated in place
(onnxruntime's GroupQueryAttention with past and present sharing one buffer). Standard
library only, written to be merged into runtime/contract.py.

Differences from concat-kv-v1, and why:
- past_key_values.{i}.* and present.{i}.* have the pool's capacity as sequence length, and
  the caller binds each present output to the very buffer it feeds as past (IO binding):
  the op writes the new positions at [past, past + new) and leaves the rest alone.
- position_ids and attention_mask are gone. The lengths come as seqlens_k (int32 [batch],
  the total length after this step minus one) and total_sequence_length (int32 scalar, the
  batch's largest total length); new token s of row b sits at position
  seqlens_k[b] + 1 - new + s, which is also its rotary position, and attends causally to
  the positions before it. So rolling a cache back by k positions is only a length change:
  the next step passes a seqlens_k k smaller and overwrites the stale rows.
- Rows of a batch must be contiguous from position 0 (no left padding); new > 1 over a
  past is verified for batch 1 (the decoders' case).
"""

from __future__ import annotations

from runtime import contract as C

CONTRACT_NAME = "inplace-kv-v1"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
CAPACITY = "capacity"  # symbolic: the KV buffers' sequence length, at most the export's max_seq_len


def _graph(name: str, dims: C.Dims, layers: range, with_hidden_input: bool) -> C.GraphContract:
    kv_shape = (C.BATCH, dims.n_kv_heads, CAPACITY, dims.head_dim)
    inputs = [C.TensorSpec(C.INPUT_IDS, "int64", (C.BATCH, C.NEW))]
    if with_hidden_input:
        inputs.append(C.TensorSpec(C.HIDDEN_STATES, dims.dtype, (C.BATCH, C.NEW, dims.dim)))
    inputs += [C.TensorSpec(SEQLENS_K, "int32", (C.BATCH,)),
               C.TensorSpec(TOTAL_SEQUENCE_LENGTH, "int32", ()),
               C.TensorSpec(C.NUM_LOGITS_INPUT, "int64", (1,))]
    inputs += [C.TensorSpec(name(i), dims.dtype, kv_shape) for i in layers for name in (C.past_key, C.past_value)]
    hidden_out = C.MODULE_HIDDEN_STATES if with_hidden_input else C.HIDDEN_STATES
    outputs = [C.TensorSpec(C.LOGITS, dims.dtype, (C.BATCH, C.NUM_LOGITS, dims.vocab_size)),
               C.TensorSpec(hidden_out, dims.dtype, (C.BATCH, C.NEW, dims.dim))]
    outputs += [C.TensorSpec(name(i), dims.dtype, kv_shape)
                for i in layers for name in (C.present_key, C.present_value)]
    return C.GraphContract(name, tuple(inputs), tuple(outputs), tuple(layers))


def inplace_graphs(dims: C.Dims) -> dict[str, C.GraphContract]:
    """Both graphs under inplace-kv-v1: full_step (layers 0 .. L-1) and recycle_step
    (L .. L+R-1), with the same names as concat-kv-v1 where they mean the same."""
    base = range(dims.n_layers)
    module = range(dims.n_layers, dims.n_layers + dims.recycle_layers)
    return {C.FULL_STEP: _graph(C.FULL_STEP, dims, base, with_hidden_input=False),
            C.RECYCLE_STEP: _graph(C.RECYCLE_STEP, dims, module, with_hidden_input=True)}


def inplace_kv_description(dims: C.Dims) -> dict:
    """The KV part of the contract as an engine.json would record it."""
    return {**C.kv_description(dims), "contract": CONTRACT_NAME,
            "layout": ["batch", "kv_heads", CAPACITY, "head_dim"], "present_shares_past_buffer": True,
            "lengths": [SEQLENS_K, TOTAL_SEQUENCE_LENGTH]}
