"""Graph rewrites the engine builders share (onnx only)."""

from __future__ import annotations

import numpy as np


def unshare_lm_head(proto) -> int:
    """Turn Gemm(x, W, transB=1) back into MatMul(x, W^T) with its own initializer.

    The exporter shares a tied LM head with the embedding that way (one matrix on disk),
    but weight quantizers only rewrite MatMul: unsharing lets the (vocab, dim) head be
    quantized too, the largest single matrix of a small model. Returns the count rewritten.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    rewritten = 0
    for i, node in enumerate(graph.node):
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        if node.op_type != "Gemm" or not trans_b or len(node.input) != 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        transposed = numpy_helper.from_array(np.ascontiguousarray(weight.T), f"{node.input[1]}.transposed")
        graph.initializer.append(transposed)
        graph.node[i].CopyFrom(helper.make_node("MatMul", [node.input[0], transposed.name], list(node.output),
                                                name=node.name))
        rewritten += 1
    return rewritten
