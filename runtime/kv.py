"""The KV pool: both graphs' caches in one layer namespace (base 0..L-1, module L..L+R-1).

The concat contract's graphs return present = concat(past, new) for every layer; the pool
keeps those arrays as the next step's past (no copy on our side), tracks each cache's
length, and rolls a cache back by positions when a draft is rejected.
"""

from __future__ import annotations

import numpy as np

from runtime import contract as C

BASE, MODULE = "base", "module"


class KVPool:
    def __init__(self, dims: C.Dims, batch: int, capacity: int):
        self.capacity = capacity
        self.layers = {BASE: C.full_step(dims).kv_layers, MODULE: C.recycle_step(dims).kv_layers}
        empty = np.zeros((batch, dims.n_kv_heads, 0, dims.head_dim), dtype=dims.dtype)  # (B, H_kv, 0, D)
        self.past = {name(i): empty for layers in self.layers.values() for i in layers
                     for name in (C.past_key, C.past_value)}
        self.lengths = {BASE: 0, MODULE: 0}

    def feeds(self, cache: str) -> dict[str, np.ndarray]:
        """The past_key_values.* inputs of the graph that owns `cache`."""
        return {name(i): self.past[name(i)] for i in self.layers[cache] for name in (C.past_key, C.past_value)}

    def output_buffers(self, cache: str) -> dict:
        """Where present.* should be written: nowhere in particular, the backend allocates."""
        return {}

    def commit(self, cache: str, outputs: dict[str, np.ndarray], new: int) -> None:
        """Take the graph's present.* outputs as the cache, `new` positions longer."""
        length = self.lengths[cache] + new
        assert length <= self.capacity, f"{cache} cache overflow: {length} > {self.capacity}"
        for i in self.layers[cache]:
            key, value = outputs[C.present_key(i)], outputs[C.present_value(i)]
            assert key.shape[2] == length, f"layer {i}: present has {key.shape[2]} positions, expected {length}"
            self.past[C.past_key(i)], self.past[C.past_value(i)] = key, value
        self.lengths[cache] = length

    def close(self) -> None:
        """Nothing to free: numpy arrays go with the pool."""

    def rollback(self, cache: str, n: int) -> None:
        """Forget the last `n` positions of `cache` (a rejected draft)."""
        length = self.lengths[cache] - n
        assert length >= 0
        for i in self.layers[cache]:
            for name in (C.past_key, C.past_value):
                self.past[name(i)] = np.ascontiguousarray(self.past[name(i)][:, :, :length])
        self.lengths[cache] = length
