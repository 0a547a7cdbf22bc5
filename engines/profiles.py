"""TensorRT optimization profiles derived from the contract and the maximum sequence length.

Two profiles per graph, as decoding has two regimes:
- "decode" (profile 0): 1 to contract.DECODE_MAX_NEW new tokens (opt 2: alternate's step) over
  a past of 0 to max_seq_len - 1 positions;
- "prefill" (profile 1): a whole prompt (1 to max_seq_len tokens, opt PREFILL_OPT) over an
  empty past.
Every dimension range follows from the contract's symbolic names: batch, new, past,
total = past + new, num_logits <= new. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime import contract as C
from runtime.errors import EngineBuildError

PREFILL_OPT = 128


@dataclass(frozen=True)
class Profile:
    name: str
    ranges: dict[str, tuple[int, int, int]]  # symbolic dimension -> (min, opt, max)
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # input -> min/opt/max shape
    values: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # shape-tensor input -> values


def dimension_ranges(max_seq_len: int, max_batch: int) -> dict[str, dict[str, tuple[int, int, int]]]:
    """Raises: EngineBuildError when max_seq_len leaves no room for a decode step."""
    if max_seq_len < C.DECODE_MAX_NEW + 1:
        raise EngineBuildError(f"max_seq_len {max_seq_len} is too small for a decode profile: it must be at "
                               f"least {C.DECODE_MAX_NEW + 1}; re-export with a larger --max-seq-len")
    decode = {C.BATCH: (1, 1, max_batch), C.NEW: (1, 2, C.DECODE_MAX_NEW),
              C.PAST: (0, max_seq_len // 2, max_seq_len - 1)}
    prefill = {C.BATCH: (1, 1, max_batch), C.NEW: (1, min(PREFILL_OPT, max_seq_len), max_seq_len),
               C.PAST: (0, 0, 0)}
    for ranges in (decode, prefill):
        ranges[C.TOTAL] = tuple(p + n for p, n in zip(ranges[C.PAST], ranges[C.NEW]))
        ranges[C.NUM_LOGITS] = (1, min(2, ranges[C.NEW][1]), ranges[C.NEW][2])
    return {"decode": decode, "prefill": prefill}


def derive_profiles(spec: C.GraphContract, max_seq_len: int, max_batch: int = 1) -> list[Profile]:
    """The optimization profiles of one graph, in binding order (decode first)."""
    profiles = []
    for name, ranges in dimension_ranges(max_seq_len, max_batch).items():
        shapes, values = {}, {}
        for tensor in spec.inputs:
            if tensor.name == C.NUM_LOGITS_INPUT:  # a value that sets the logits' shape
                lo, opt, hi = ranges[C.NUM_LOGITS]
                values[tensor.name] = ((lo,), (opt,), (hi,))
                shapes[tensor.name] = ((1,), (1,), (1,))
                continue
            triple = [tuple(ranges[d][k] if isinstance(d, str) else d for d in tensor.shape) for k in range(3)]
            shapes[tensor.name] = tuple(triple)
        profiles.append(Profile(name, ranges, shapes, values))
    return profiles


def profiles_json(spec: C.GraphContract, max_seq_len: int, max_batch: int) -> list[dict]:
    return [{"name": p.name, "ranges": {k: list(v) for k, v in p.ranges.items()}}
            for p in derive_profiles(spec, max_seq_len, max_batch)]
