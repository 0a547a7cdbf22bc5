"""Latency of single graph steps under ONNX Runtime: the arithmetic behind the strategies'
speedups (a 2-token base step against a 1-token one, and the module's step).

    python benchmarks/step_latency.py --artifacts build/smollm2-onnx [--engine cpu-int4] [--past 100]

Steps run interleaved (base, module, base, ...) as alternate runs them, so that one
session's thread pool competes with the other's as it does in decoding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime import contract as C  # noqa: E402
from runtime.generator import Generator  # noqa: E402
from runtime.kv import BASE, MODULE  # noqa: E402


def feeds(gen: Generator, cache: str, new: int, past: int) -> dict:
    dims = gen.dims
    pool = gen.backend.new_kv_pool(dims, 1, past + new)
    layers = pool.layers[cache]
    zeros = np.zeros((1, dims.n_kv_heads, past, dims.head_dim), dtype=dims.dtype)
    f = {C.INPUT_IDS: np.ones((1, new), np.int64), C.POSITION_IDS: np.arange(past, past + new)[None],
         C.ATTENTION_MASK: np.ones((1, past + new), np.int64), C.NUM_LOGITS_INPUT: np.array([1], np.int64)}
    f.update({name(i): zeros for i in layers for name in (C.past_key, C.past_value)})
    if cache == MODULE:
        f[C.HIDDEN_STATES] = np.zeros((1, new, dims.dim), dtype=dims.dtype)
    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--past", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    gen = Generator.from_artifacts(args.artifacts, args.engine, args.threads, check_hashes=False)
    steps = {"base, 1 new token": (C.FULL_STEP, feeds(gen, BASE, 1, args.past)),
             "base, 2 new tokens": (C.FULL_STEP, feeds(gen, BASE, 2, args.past)),
             "module, 2 new tokens": (C.RECYCLE_STEP, feeds(gen, MODULE, 2, args.past))}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.repeats + 3):
        for name, (graph, f) in steps.items():
            start = time.perf_counter()
            gen.backend.run(graph, f)
            if round_ >= 3:
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name:<22} median {statistics.median(values) * 1e3:7.2f} ms   min {min(values) * 1e3:7.2f} ms")
    t1, t2, tm = (statistics.median(times[n]) for n in steps)
    print(f"alternate's ceiling: 2 x base(1) / (base(2) + module(2)) = {2 * t1 / (t2 + tm):.2f}x")


if __name__ == "__main__":
    main()
