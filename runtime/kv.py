"""KV pools: both graphs' caches in one layer namespace (base 0..L-1, module L..L+R-1),
a length per cache, commit of a step and rollback by positions (a rejected draft); and the
base's hidden state per position, which the module's steps read (HostHidden here; a device
pool keeps it in device memory).

- KVPool (concat-kv-v1): the graphs return present = concat(past, new) for every layer;
  the pool keeps those arrays as the next step's past (no copy on our side).
- InplaceKVPool (inplace-kv-v1): one fixed-capacity buffer per layer, key and value, that
  the graph reads as past and writes as present (the backend binds both to it); a commit
  or a rollback only changes a length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import contract as C

BASE, MODULE = "base", "module"


def prompt_feeds(tokens: list[int], num_logits: int) -> dict[str, np.ndarray]:
    """The contract's common inputs of one row's call over all of `tokens` from an empty
    cache (a prefill): positions 0 .. T-1, every position attended, the last `num_logits`
    positions' logits. The caller adds the pool's past_key_values.* feeds."""
    n = len(tokens)
    return {C.INPUT_IDS: np.array([tokens], dtype=np.int64), C.POSITION_IDS: np.arange(n, dtype=np.int64)[None],
            C.ATTENTION_MASK: np.ones((1, n), dtype=np.int64),
            C.NUM_LOGITS_INPUT: np.array([num_logits], dtype=np.int64)}


class HostHidden:
    """The base's h_j per cache position, (B, capacity, dim) numpy, for pools on the host;
    made at the first step that keeps one (a pool that only runs the base holds none)."""

    capacity: int
    _hidden: np.ndarray | None = None

    def keep_hidden(self, start: int, hidden: np.ndarray) -> None:
        """Keep a base step's hidden_states (B, T, dim) as positions start .. start+T-1."""
        if self._hidden is None:
            self._hidden = np.zeros((hidden.shape[0], self.capacity, hidden.shape[2]), dtype=hidden.dtype)
        self._hidden[:, start:start + hidden.shape[1]] = hidden

    def module_hidden(self, pad: np.ndarray, start: int, end: int) -> np.ndarray:
        """The module's hidden_states input for positions start .. end-1: h_{j-1} for each
        position j, zero where row r has none (j - 1 < pad[r]: its first token, or padding)."""
        index = np.arange(start, end)
        has_prev = index[None, :] - 1 >= pad[:, None]  # (B, T)
        return np.where(has_prev[..., None], self._hidden[:, index - 1], 0).astype(self._hidden.dtype, copy=False)

    def chained_hidden(self, states: np.ndarray) -> np.ndarray:
        """The module's hidden_states input for a chained draft: its own module_hidden_states
        (B, T, dim) at the last position, (B, 1, dim). A copy: an in-place engine writes the
        next step's module_hidden_states into the buffer `states` lives in."""
        return states[:, -1:].copy()


class KVPool(HostHidden):
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

    def output_buffers(self, cache: str, hidden: bool = False) -> dict:
        """Where present.* should be written: nowhere in particular, the backend allocates
        (and hidden states come back as arrays, whatever `hidden` asks)."""
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


@dataclass(frozen=True)
class InplaceOutputs:
    buffers: dict  # present.* name -> buffer
    bindings: dict  # graph name -> the backend's binding of the pool's buffers, kept by the pool


class InplaceKVPool(HostHidden):
    """Fixed-capacity buffers, (rows, H_kv, capacity, D) per layer, key and value (one row
    for a Generator; a continuous batch's slots for runtime.batching). `buffers` maps each
    past_key_values.* name to its buffer as the backend binds it (an onnxruntime OrtValue
    over `arrays`); output_buffers gives the present.* names the same buffers. `lengths`
    counts one sequence's positions: a pool of several rows leaves them to its owner."""

    def __init__(self, dims: C.Dims, capacity: int, wrap=lambda array: array, rows: int = 1,
                 arrays: dict[str, np.ndarray] | None = None):
        self.dims, self.capacity, self._wrap = dims, capacity, wrap
        self.layers = {BASE: C.full_step(dims).kv_layers, MODULE: C.recycle_step(dims).kv_layers}
        shape = (rows, dims.n_kv_heads, capacity, dims.head_dim)  # (B, H_kv, capacity, D)
        # Uninitialized and untouched until written: the graphs read a cache only below its
        # length, and a long capacity costs only the pages decoding reaches.
        self.arrays = arrays if arrays is not None else {
            name(i): np.empty(shape, dtype=dims.dtype) for layers in self.layers.values()
            for i in layers for name in (C.past_key, C.past_value)}
        self.buffers = {name: wrap(array) for name, array in self.arrays.items()}
        self.lengths = {BASE: 0, MODULE: 0}
        self.bindings: dict = {}  # the backend's bindings of these buffers, made once per graph
        # The same every step, so built once.
        self._feeds = {cache: {name(i): self.buffers[name(i)] for i in layers for name in (C.past_key, C.past_value)}
                       for cache, layers in self.layers.items()}
        self._outputs = {cache: InplaceOutputs({present(i): self.buffers[past(i)] for i in layers
                                                for past, present in ((C.past_key, C.present_key),
                                                                      (C.past_value, C.present_value))},
                                               self.bindings)
                         for cache, layers in self.layers.items()}

    def feeds(self, cache: str) -> dict:
        return self._feeds[cache]

    def output_buffers(self, cache: str, hidden: bool = False) -> "InplaceOutputs":
        """present.* name -> the buffer its past_key_values.* reads (the graph updates it in
        place), with the pool's bindings for the backend to reuse (hidden states come back
        as arrays, whatever `hidden` asks)."""
        return self._outputs[cache]

    def commit(self, cache: str, outputs: dict, new: int) -> None:
        """The graph wrote `new` positions after the cache's length; count them."""
        assert self.lengths[cache] + new <= self.capacity, f"{cache} cache overflow"
        self.lengths[cache] += new

    def rollback(self, cache: str, n: int) -> None:
        """Forget the last `n` positions: the next step overwrites them."""
        assert 0 <= n <= self.lengths[cache]
        self.lengths[cache] -= n

    def rows(self, start: int, stop: int) -> "InplaceKVPool":
        """A pool over rows start .. stop-1 of these buffers: views, no copy (the batch
        dimension is the outermost, so each view is contiguous), with bindings of its own."""
        return InplaceKVPool(self.dims, self.capacity, self._wrap,
                             arrays={name: array[start:stop] for name, array in self.arrays.items()})

    def close(self) -> None:
        self.bindings.clear()

