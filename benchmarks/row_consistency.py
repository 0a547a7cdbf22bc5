"""Does a position get the same bits from a one-token step as from a wider one? Each CPU
kernel the engines use, alone, with the model's shapes: the first row of a step over
--widths new tokens against the same row computed alone. Where a kernel's answer moves,
greedy verify (several positions per step) can part ways with standard (one per step)
after a near-tie; README ("verify's draft sources") explains what it means per engine.

    python benchmarks/row_consistency.py --artifacts build/smollm2-onnx [--widths 2,4,16] [--past 100]

Kernels: GroupQueryAttention over an in-place cache of --past positions (rotary inside, as
the fused engines run it); MatMulNBits (4-bit, block 32, accuracy level 4: int8 activations
per block, as cpu-int4 and cpu-int4-sym); the dynamic int8 MatMul quantize_dynamic makes
(cpu-int8: one activation scale per tensor); a float32 MatMul (cpu-fp32).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def attention(heads: int, kv_heads: int, head_dim: int, past: int, new: int, threads: int) -> np.ndarray:
    """GroupQueryAttention's output (new, heads * head_dim) for `new` tokens after `past`,
    over a fixed random cache and query."""
    from onnx import TensorProto, helper, numpy_helper

    capacity, width = past + 32, (heads + 2 * kv_heads) * head_dim
    cache = [1, kv_heads, capacity, head_dim]
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, new, width]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, []),
              helper.make_tensor_value_info("past_k", TensorProto.FLOAT, cache),
              helper.make_tensor_value_info("past_v", TensorProto.FLOAT, cache)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("out", "k", "v")]
    tables = [numpy_helper.from_array(np.random.default_rng(1).random((capacity, head_dim // 2)).astype(np.float32), name)
              for name in ("cos", "sin")]
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"],
                            ["out", "k", "v"], domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads,
                            do_rotary=1, scale=head_dim ** -0.5)
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs, tables),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    state = np.random.default_rng(2)
    feeds = {"qkv": state.standard_normal((1, 16, width)).astype(np.float32)[:, :new],
             "seqlens_k": np.array([past + new - 1], np.int32), "total": np.array(past + new, np.int32),
             "past_k": state.standard_normal(cache).astype(np.float32),
             "past_v": state.standard_normal(cache).astype(np.float32)}
    return _session(model, threads).run(["out"], feeds)[0][0]


def matmul(kind: str, k: int, n: int, threads: int):
    """A function of x (1, M, k) -> (1, M, n): one MatMul over fixed random weights, as
    `kind` ("fp32", "int4" or "int8") builds it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array((np.random.default_rng(3).standard_normal((k, n)) * 0.02).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if kind == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        model = quantizer.model.model
    elif kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/m.onnx")
            quantize_dynamic(f"{tmp}/m.onnx", f"{tmp}/q.onnx", op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
            model = onnx.load(f"{tmp}/q.onnx")
    session = _session(model, threads)
    return lambda x: session.run(None, {"x": x})[0]


def report(dims: dict, widths: list[int], past: int, threads: int) -> dict[str, dict[int, float]]:
    """Per kernel and width: the largest difference between the first row of a step of that
    width and the same row alone (0.0: the same bits)."""
    shape = (dims["n_heads"], dims["n_kv_heads"], dims["head_dim"], past)
    results: dict[str, dict[int, float]] = {}
    alone = attention(*shape, 1, threads)[0]
    results["GroupQueryAttention"] = {w: float(np.abs(attention(*shape, w, threads)[0] - alone).max()) for w in widths}
    x = np.random.default_rng(4).standard_normal((1, max(widths), dims["dim"])).astype(np.float32)
    for kind in ("fp32", "int4", "int8"):
        run = matmul(kind, dims["dim"], dims["intermediate"], threads)
        first = run(x[:, :1])[0, 0]
        results[f"MatMul {kind}"] = {w: float(np.abs(run(x[:, :w])[0, 0] - first).max()) for w in widths}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--widths", default="2,4,16")
    parser.add_argument("--past", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = json.loads((Path(args.artifacts) / "manifest.json").read_text())["config"]
    shapes = {"n_heads": config["n_heads"], "n_kv_heads": config["n_kv_heads"],
              "head_dim": config.get("head_dim") or config["dim"] // config["n_heads"], "dim": config["dim"],
              "intermediate": config["ffn_dim"]}
    widths = [int(w) for w in args.widths.split(",")]
    print(f"first row of a step of W new tokens against the same row alone; largest difference "
          f"(0: the same bits); {shapes}, past {args.past}, {args.threads} threads")
    print(f"{'kernel':<22}" + "".join(f"W={w:<10}" for w in widths))
    for kernel, row in report(shapes, widths, args.past, args.threads).items():
        print(f"{kernel:<22}" + "".join(f"{row[w]:<12.3g}" for w in widths))


if __name__ == "__main__":
    main()
