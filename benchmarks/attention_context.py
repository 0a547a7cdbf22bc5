"""What long context costs a decode step on the CPU: onnxruntime's GroupQueryAttention alone,
as the fused engines run it (in-place KV buffer of fixed capacity, rotary inside), one node
per layer, at several past lengths.

    python benchmarks/attention_context.py --artifacts build/smollm2-onnx [--past 100,400,1000,1500]
        [--new 1,4] [--threads 2] [--float16]

Reads the model's shape (layers, heads, KV heads, head size) from the export's manifest. The
figure to compare is the read floor: one pass over the K and V caches per step, against
which onnxruntime 1.32's CPU kernel runs one GEMM per query head, so every KV head's cache
is read once for each query head that shares it (3 times for SmolLM2's 9 heads over 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def gqa_session(layers: int, heads: int, kv_heads: int, head_dim: int, capacity: int, new: int, threads: int,
                float16: bool = False):
    """A session of `layers` GroupQueryAttention nodes over in-place caches of `capacity`
    positions, with an IO binding of random caches and a random query of `new` tokens (the
    caller binds seqlens_k and total). The caches are drawn before the query, so sessions of
    any width with the same capacity see the same caches and the same first query row."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    element, dtype = (TensorProto.FLOAT16, np.float16) if float16 else (TensorProto.FLOAT, np.float32)

    width = (heads + 2 * kv_heads) * head_dim
    inputs = [helper.make_tensor_value_info("qkv", element, [1, new, width]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    outputs, nodes = [], []
    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.random((capacity, head_dim // 2)).astype(dtype), name) for name in ("cos", "sin")]
    for i in range(layers):
        cache = [1, kv_heads, capacity, head_dim]
        inputs += [helper.make_tensor_value_info(f"past_{kv}{i}", element, cache) for kv in "kv"]
        outputs += [helper.make_tensor_value_info(f"{name}{i}", element, None) for name in ("out", "k", "v")]
        nodes.append(helper.make_node("GroupQueryAttention", ["qkv", "", "", f"past_k{i}", f"past_v{i}", "seqlens_k",
                                                              "total", "cos", "sin"], [f"out{i}", f"k{i}", f"v{i}"],
                                      domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, do_rotary=1,
                                      scale=head_dim ** -0.5))
    model = helper.make_model(helper.make_graph(nodes, "attention", inputs, outputs, tables),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for i in range(layers):
        for kv in "kv":  # the engines' in-place form: past and present share one buffer
            buffer = ort.OrtValue.ortvalue_from_numpy(rng.random((1, kv_heads, capacity, head_dim)).astype(dtype))
            binding.bind_ortvalue_input(f"past_{kv}{i}", buffer)
            binding.bind_ortvalue_output(f"{kv}{i}", buffer)
        binding.bind_output(f"out{i}")
    binding.bind_cpu_input("qkv", rng.random((1, new, width)).astype(dtype))
    return session, binding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--past", default="100,400,1000,1500")
    parser.add_argument("--new", default="1,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--float16", action="store_true", help="a float16 KV cache (and inputs)")
    args = parser.parse_args()
    config = json.loads((Path(args.artifacts) / "manifest.json").read_text())["config"]
    layers, heads, kv_heads = config["n_layers"], config["n_heads"], config["n_kv_heads"]
    head_dim = config.get("head_dim") or config["dim"] // heads
    pasts = [int(p) for p in args.past.split(",")]
    capacity = max(pasts) + 64
    print(f"{layers} GroupQueryAttention nodes ({heads} heads over {kv_heads} KV heads of {head_dim}, "
          f"{'float16' if args.float16 else 'float32'}), {args.threads} threads; milliseconds per step "
          f"(median of {args.repeats})")
    print("past  new  attention ms  KV read floor MB  GB/s at one read")
    for new in (int(n) for n in args.new.split(",")):
        session, binding = gqa_session(layers, heads, kv_heads, head_dim, capacity, new, args.threads, args.float16)
        for past in pasts:
            binding.bind_cpu_input("seqlens_k", np.array([past + new - 1], np.int32))
            binding.bind_cpu_input("total", np.array(past + new, np.int32))
            times = []
            for i in range(args.repeats + 5):
                start = time.perf_counter()
                session.run_with_iobinding(binding)
                if i >= 5:
                    times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1e3
            megabytes = layers * 2 * kv_heads * (past + new) * head_dim * (2 if args.float16 else 4) / 1e6
            print(f"{past:4d}  {new:3d}  {ms:12.2f}  {megabytes:16.1f}  {megabytes / ms:16.1f}")


if __name__ == "__main__":
    main()
