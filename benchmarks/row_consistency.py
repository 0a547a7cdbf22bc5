"""Does a position get the same bits from a one-token step as from a wider one? Each CPU
kernel the engines use, alone, with the model's shapes: the first row of a step over
--widths new tokens against the same row computed alone. Where a kernel's answer moves,
greedy verify (several positions per step) can part ways with standard (one per step)
after a near-tie; README ("verify's draft sources") explains what it means per engine.

    python benchmarks/row_consistency.py --artifacts build/smollm2-onnx [--widths 2,4,16] [--past 100]

Kernels: GroupQueryAttention over an in-place cache of --past positions (rotary inside, as
the fused engines run it: benchmarks/attention_context.py's session); one MatMul as the
engine builder emits it per precision (engines.ort_fused.quantize): float32 (cpu-fp32),
MatMulNBits (int4-sym: 4-bit, block 32, int8 activations per block, as cpu-int4 too) and the
dynamic int8 MatMul (cpu-int8: one activation scale per tensor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention_context import gqa_session  # noqa: E402


def attention(heads: int, kv_heads: int, head_dim: int, past: int, new: int, threads: int) -> np.ndarray:
    """GroupQueryAttention's output (new, heads * head_dim) for `new` tokens after `past`,
    over attention_context.gqa_session's caches and query (the same for every width)."""
    session, binding = gqa_session(1, heads, kv_heads, head_dim, past + 32, new, threads)
    binding.bind_cpu_input("seqlens_k", np.array([past + new - 1], np.int32))
    binding.bind_cpu_input("total", np.array(past + new, np.int32))
    session.run_with_iobinding(binding)
    return next(o for o in binding.copy_outputs_to_cpu() if o.ndim == 3)[0]  # out0 (the caches are 4-D)


def matmul(kind: str, k: int, n: int, threads: int):
    """A function of x (1, M, k) -> (1, M, n): one MatMul over fixed random weights,
    quantized as the engines of precision `kind` quantize theirs (engines.ort_fused.quantize)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from engines.ort_fused import quantize

    weights = numpy_helper.from_array((np.random.default_rng(3).standard_normal((k, n)) * 0.02).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, n])], [weights])
    model = quantize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), kind)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def report(dims: dict, widths: list[int], past: int, threads: int) -> dict[str, dict[int, float]]:
    """Per kernel and width: the largest difference between the first row of a step of that
    width and the same row alone (0.0: the same bits)."""
    shape = (dims["n_heads"], dims["n_kv_heads"], dims["head_dim"], past)
    results: dict[str, dict[int, float]] = {}
    alone = attention(*shape, 1, threads)[0]
    results["GroupQueryAttention"] = {w: float(np.abs(attention(*shape, w, threads)[0] - alone).max()) for w in widths}
    x = np.random.default_rng(4).standard_normal((1, max(widths), dims["dim"])).astype(np.float32)
    for kind in ("fp32", "int4-sym", "int8"):
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
