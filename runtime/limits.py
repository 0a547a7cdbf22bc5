"""Sizes checked before anything is allocated: the memory one sequence's decoding state
needs at the maximum sequence length, against this machine's memory. Standard library only.

The export refuses a max_seq_len whose KV cache could never be allocated here, and the
runtime refuses such an export before opening it, so that a typo (`--max-seq-len
1000000000`) fails at once with the figure instead of at the first generation.
"""

from __future__ import annotations

import os

from runtime import contract as C
from runtime.errors import ConfigError

ITEM_BYTES = {"float32": 4, "float16": 2}


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def decode_state_bytes(dims: C.Dims, max_seq_len: int) -> tuple[int, int]:
    """(KV cache bytes, all decoding state bytes) of one sequence at `max_seq_len`: the KV of
    every base and module layer, key and value, plus the runtime's per-position arrays
    (hidden state, token id and mask)."""
    item = ITEM_BYTES[dims.dtype]
    kv = 2 * (dims.n_layers + dims.recycle_layers) * dims.n_kv_heads * dims.head_dim * max_seq_len * item
    return kv, kv + max_seq_len * (dims.dim * item + 16)


def check_decode_memory(dims: C.Dims, max_seq_len: int, fix: str, memory: int | None = None) -> None:
    """Refuse a max_seq_len whose decoding state for one sequence exceeds this machine's memory.

    Raises:
        ConfigError: naming the sizes, the bytes needed and the memory there is; `fix` says
            what to change.
    """
    memory = physical_memory() if memory is None else memory
    kv, total = decode_state_bytes(dims, max_seq_len)
    if memory is not None and total > memory:
        raise ConfigError(
            f"max_seq_len {max_seq_len} needs {human_bytes(total)} per sequence to decode: a KV cache of "
            f"{human_bytes(kv)} (2 x {dims.n_layers + dims.recycle_layers} layers x {dims.n_kv_heads} KV heads x "
            f"{dims.head_dim} x {max_seq_len} positions x {ITEM_BYTES[dims.dtype]} bytes) and the positions' "
            f"states, more than this machine's {human_bytes(memory)} of memory; {fix}")
