"""Static checks of an exported graph that a TensorRT build relies on, runnable without a GPU
(onnx only).

A strongly typed TensorRT network computes each op in its inputs' type, so a float16 graph is
only as safe as its casts: RMSNorm's square and mean, the rotary angles' cos and sin and the
attention softmax must take float32 inputs (x^2 overflows float16 past |x| = 256, and
SmolLM2's residual stream reaches ~25,000), and every float constant must be finite in
float16 (float32's lowest value, -3.4e38, becomes -inf; a fully masked attention row then
gives NaN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Ops whose input must stay float32 inside a float16 graph.
FLOAT32_OPS = ("Pow", "ReduceMean", "Softmax", "Cos", "Sin")
FLOAT16_MAX = 65504.0
# Constants up to this many elements are read for their values (weights are never that large).
SMALL_CONSTANT = 1024


def load_structure(path: Path):
    """The graph at `path` with its types inferred, weights in external files left unread."""
    import onnx

    return onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))


def element_types(proto) -> dict[str, int]:
    """Every named value's ONNX element type (inputs, outputs, intermediates, initializers)."""
    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _small_constants(proto):
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if int(np.prod(tensor.dims)) <= SMALL_CONSTANT and tensor.data_location != tensor.EXTERNAL:
            yield tensor.name, numpy_helper.to_array(tensor)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and int(np.prod(attr.t.dims)) <= SMALL_CONSTANT:
                    yield node.output[0], numpy_helper.to_array(attr.t)


def float16_hazards(proto) -> list[str]:
    """What would overflow or lose its meaning when the graph runs in float16 as typed: each
    FLOAT32_OPS node that takes a float16 input, and each float constant not finite in
    float16. Empty for a safe graph. `proto` must have its types inferred (load_structure)."""
    from onnx import TensorProto

    types = element_types(proto)
    hazards = []
    for node in proto.graph.node:
        if node.op_type in FLOAT32_OPS and types.get(node.input[0]) != TensorProto.FLOAT:
            got = TensorProto.DataType.Name(types.get(node.input[0], 0))
            hazards.append(f"{node.op_type} node {node.name or node.output[0]!r} computes in {got}, not FLOAT")
    for name, value in _small_constants(proto):
        if value.dtype.kind == "f" and value.size and not np.all(np.abs(value.astype(np.float64)) <= FLOAT16_MAX):
            worst = value.flat[int(np.argmax(np.abs(value.astype(np.float64))))]
            hazards.append(f"constant {name!r} holds {worst:.4g}, which float16 cannot represent")
    return hazards


def float32_islands(proto) -> dict[str, int]:
    """How many nodes of each FLOAT32_OPS op take a float32 input."""
    from onnx import TensorProto

    types = element_types(proto)
    counts = dict.fromkeys(FLOAT32_OPS, 0)
    for node in proto.graph.node:
        if node.op_type in counts and types.get(node.input[0]) == TensorProto.FLOAT:
            counts[node.op_type] += 1
    return counts


def tensorrt_op_problems(proto) -> list[str]:
    """What TensorRT's ONNX parser would refuse (engines/onnx_tensorrt_ops.py): an opset
    outside its range, an op it lacks, an input element type it does not take, a non-constant
    input that must be one. Empty when every node is importable. `proto`: types inferred."""
    from onnx import TensorProto

    from engines.onnx_tensorrt_ops import CONSTANT_INPUTS, OPERATORS, OPSETS, SOURCE, TYPE_NAMES

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    problems = [] if opset in OPSETS else [f"opset {opset} is outside {OPSETS.start}..{OPSETS.stop - 1}"]
    types = element_types(proto)
    constants = {t.name for t in proto.graph.initializer}
    constants |= {n.output[0] for n in proto.graph.node if n.op_type == "Constant"}
    for node in proto.graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.op_type not in OPERATORS:
            problems.append(f"{where}: not in TensorRT's ONNX operators ({SOURCE})")
            continue
        data = node.input[1] if node.op_type == "Where" else (node.input[0] if node.input else None)
        if data:
            name = TYPE_NAMES.get(types.get(data), TensorProto.DataType.Name(types.get(data, 0)))
            supported = OPERATORS[node.op_type]
            if name not in supported:
                problems.append(f"{where}: takes {name}; TensorRT's importer takes {', '.join(supported)}")
        index = CONSTANT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
            problems.append(f"{where}: input {index} must be a constant for TensorRT")
    return problems
