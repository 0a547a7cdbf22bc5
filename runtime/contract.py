"""The I/O contract of the two graphs: the one place where tensor names, dtypes, symbolic
shapes and the KV layout are spelled (docs/design.md section 3). Standard library only.

KV layout, per layer, for key and value alike: [batch, kv_heads, seq, head_dim]. The base
owns layers 0 .. L-1 and the recyclable module layers L .. L+R-1 of one namespace, so both
graphs bind their caches the same way and the runtime allocates one pool for both.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_NAME = "concat-kv-v1"  # growing KV: present = concat(past, new); the exported graphs
# Fixed-capacity KV updated in place (ONNX Runtime's GroupQueryAttention, past and present
# bound to one buffer): the fused ONNX Runtime engines. Lengths come as SEQLENS_K and
# TOTAL_SEQUENCE_LENGTH instead of position_ids and attention_mask; see inplace_graphs.
INPLACE_CONTRACT_NAME = "inplace-kv-v1"
KV_CONTRACTS = (CONTRACT_NAME, INPLACE_CONTRACT_NAME)
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
FULL_STEP = "full_step"
RECYCLE_STEP = "recycle_step"
FLOAT_DTYPES = ("float32", "float16")
# The decode/prefill split of a step, which engines with shape profiles (TensorRT) build and
# select by: a step of up to DECODE_MAX_NEW new tokens decodes over a past (standard takes 1,
# alternate 2, verify 1 + its drafts, up to 16); a longer one is a prefill.
DECODE_MAX_NEW = 16

# Every element type the graphs use, by the contract's name (numpy's too), with how ONNX
# numbers it (TensorProto), how ONNX Runtime spells it and TensorRT's DataType member.
ELEMENT_TYPES = {
    "float32": (1, "tensor(float)", "FLOAT"),
    "float16": (10, "tensor(float16)", "HALF"),
    "bfloat16": (16, "tensor(bfloat16)", "BF16"),
    "int64": (7, "tensor(int64)", "INT64"),
    "int32": (6, "tensor(int32)", "INT32"),
}


def dtype_name(value, library: str) -> str:
    """The contract's name of an element type as `library` ("onnx", "onnxruntime" or
    "tensorrt") gives it; an unknown one comes back as its own string."""
    column = ("onnx", "onnxruntime", "tensorrt").index(library)
    if library == "tensorrt":
        value = getattr(value, "name", str(value).rsplit(".", 1)[-1])
    return next((name for name, row in ELEMENT_TYPES.items() if row[column] == value), str(value))


# Symbolic dimensions; CAPACITY is an in-place KV buffer's length (at most max_seq_len).
BATCH, NEW, PAST, TOTAL, NUM_LOGITS, CAPACITY = "batch", "new", "past", "total", "num_logits", "capacity"

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
NUM_LOGITS_INPUT = "num_logits"
HIDDEN_STATES = "hidden_states"
# ONNX forbids an output named like an input, so recycle_step's own state g gets its own name.
MODULE_HIDDEN_STATES = "module_hidden_states"
LOGITS = "logits"
# ONNX metadata entry of each exported graph: {parameter or "parameter.T": initializer name}.
WEIGHTS_METADATA = "recycle_export.weights"


def past_key(layer: int) -> str:
    return f"past_key_values.{layer}.key"


def past_value(layer: int) -> str:
    return f"past_key_values.{layer}.value"


def present_key(layer: int) -> str:
    return f"present.{layer}.key"


def present_value(layer: int) -> str:
    return f"present.{layer}.value"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64", "float32" or "float16"
    shape: tuple[str | int, ...]  # str entries are symbolic dimensions


@dataclass(frozen=True)
class Dims:
    """The model sizes the contract depends on, read from a manifest's config."""

    n_layers: int
    recycle_layers: int
    n_kv_heads: int
    head_dim: int
    dim: int
    vocab_size: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES:  # the manifest's reader refuses others first
            raise ValueError(f"float dtype {self.dtype!r} is not one of {FLOAT_DTYPES}")

    @classmethod
    def from_config(cls, config: dict, dtype: str = "float32") -> "Dims":
        head_dim = config.get("head_dim") or config["dim"] // config["n_heads"]
        return cls(config["n_layers"], config["recycle_layers"], config["n_kv_heads"],
                   head_dim, config["dim"], config["vocab_size"], dtype)


@dataclass(frozen=True)
class GraphContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kv_layers: tuple[int, ...]  # the global layer indices whose KV this graph reads and writes

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _kv(dims: Dims, layers: range) -> tuple[list[TensorSpec], list[TensorSpec]]:
    past_shape = (BATCH, dims.n_kv_heads, PAST, dims.head_dim)
    total_shape = (BATCH, dims.n_kv_heads, TOTAL, dims.head_dim)
    past = [TensorSpec(name(i), dims.dtype, past_shape) for i in layers for name in (past_key, past_value)]
    present = [TensorSpec(name(i), dims.dtype, total_shape)
               for i in layers for name in (present_key, present_value)]
    return past, present


def _graph(name: str, dims: Dims, layers: range, with_hidden_input: bool) -> GraphContract:
    past, present = _kv(dims, layers)
    inputs = [TensorSpec(INPUT_IDS, "int64", (BATCH, NEW))]
    if with_hidden_input:
        inputs.append(TensorSpec(HIDDEN_STATES, dims.dtype, (BATCH, NEW, dims.dim)))
    inputs += [TensorSpec(POSITION_IDS, "int64", (BATCH, NEW)),
               TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),
               TensorSpec(NUM_LOGITS_INPUT, "int64", (1,))]
    hidden_out = MODULE_HIDDEN_STATES if with_hidden_input else HIDDEN_STATES
    outputs = [TensorSpec(LOGITS, dims.dtype, (BATCH, NUM_LOGITS, dims.vocab_size)),
               TensorSpec(hidden_out, dims.dtype, (BATCH, NEW, dims.dim))]
    return GraphContract(name, tuple(inputs + past), tuple(outputs + present), tuple(layers))


def full_step(dims: Dims) -> GraphContract:
    """The base model's step: layers 0 .. L-1."""
    return _graph(FULL_STEP, dims, range(dims.n_layers), with_hidden_input=False)


def recycle_step(dims: Dims) -> GraphContract:
    """The recyclable module's step: layers L .. L+R-1; hidden_states in is h_{j-1} per x_j,
    module_hidden_states out is the module's own final-normed state g (for chained drafts)."""
    return _graph(RECYCLE_STEP, dims, range(dims.n_layers, dims.n_layers + dims.recycle_layers),
                  with_hidden_input=True)


def select_profile(new: int) -> int:
    """The shape profile a step of `new` new tokens runs under: 0 decode, 1 prefill."""
    return 0 if new <= DECODE_MAX_NEW else 1


def graphs(dims: Dims, kv_contract: str = CONTRACT_NAME) -> dict[str, GraphContract]:
    """Both graphs under `kv_contract` (one of KV_CONTRACTS)."""
    if kv_contract == INPLACE_CONTRACT_NAME:
        return inplace_graphs(dims)
    return {FULL_STEP: full_step(dims), RECYCLE_STEP: recycle_step(dims)}


def _inplace_graph(base: GraphContract) -> GraphContract:
    """`base` (concat-kv-v1) under inplace-kv-v1: past and present KV of shape
    [batch, kv_heads, capacity, head_dim], each present bound to its past's buffer (the
    graph writes positions [total - new, total) and leaves the rest alone); position_ids
    and attention_mask give way to seqlens_k (int32 [batch], total - 1 per row) and
    total_sequence_length (int32 scalar, the longest row's total). New token s sits at
    position total - new + s, its rotary position too, and attends causally, so rolling a
    cache back by k positions is only a length change: the next step overwrites the stale
    rows. Rows start at position 0 (no left padding): no lockstep left-padded batches,
    but a continuous batch (runtime.batching) steps rows of different lengths, one new
    token each (GroupQueryAttention takes more only in a batch of one)."""
    def kv(t: TensorSpec) -> TensorSpec:
        return TensorSpec(t.name, t.dtype, (BATCH, t.shape[1], CAPACITY, t.shape[3]))

    inputs = []
    for t in base.inputs:
        if t.name == POSITION_IDS:
            inputs += [TensorSpec(SEQLENS_K, "int32", (BATCH,)), TensorSpec(TOTAL_SEQUENCE_LENGTH, "int32", ())]
        elif t.name != ATTENTION_MASK:
            inputs.append(kv(t) if t.name.startswith("past_key_values.") else t)
    outputs = [kv(t) if t.name.startswith("present.") else t for t in base.outputs]
    return GraphContract(base.name, tuple(inputs), tuple(outputs), base.kv_layers)


def inplace_graphs(dims: Dims) -> dict[str, GraphContract]:
    return {name: _inplace_graph(spec) for name, spec in graphs(dims).items()}


def kv_description(dims: Dims) -> dict:
    """The KV part of the contract as written into manifest.json."""
    return {
        "contract": CONTRACT_NAME,
        "layout": ["batch", "kv_heads", "seq", "head_dim"],
        "dtype": dims.dtype,
        "kv_heads": dims.n_kv_heads,
        "head_dim": dims.head_dim,
        "base_layers": [0, dims.n_layers],
        "module_layers": [dims.n_layers, dims.n_layers + dims.recycle_layers],
        "input_names": [past_key("{i}"), past_value("{i}")],
        "output_names": [present_key("{i}"), present_value("{i}")],
    }
