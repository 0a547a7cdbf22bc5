"""Latency of single graph steps: the arithmetic behind the strategies' speedups (a base
step on 1, 2 and 4 new tokens, as standard, verify with one draft and verify with three
drafts take them, and the module's step), over a cache of --past positions.

    python benchmarks/step_latency.py --artifacts build/smollm2-onnx [--engine cpu-int4] [--past 100]

Works for every KV form: the cache is filled by a real prefill through the backend's own
pool, and each timed step is rolled back afterwards, so every step sees the same past.
Steps run interleaved (base, module, base, ...) so that the two sessions share the
machine as they do in decoding.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.costs import step, timed_steps  # noqa: E402
from runtime.generator import Generator  # noqa: E402
from runtime.kv import BASE, MODULE  # noqa: E402

STEPS = {"base, 1 new token": (BASE, 1), "base, 2 new tokens": (BASE, 2), "base, 4 new tokens": (BASE, 4),
         "module, 1 new token": (MODULE, 1), "module, 2 new tokens": (MODULE, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--past", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    gen = Generator.from_artifacts(args.artifacts, args.engine, args.threads, check_hashes=False)
    pool = gen.backend.new_kv_pool(gen.dims, 1, args.past + 8)
    for cache in (BASE, MODULE):
        step(gen, pool, cache, args.past)  # the prefill: a real cache of --past positions
    times = timed_steps(gen, pool, STEPS, args.repeats)
    for name, values in times.items():
        print(f"{name:<22} median {statistics.median(values) * 1e3:7.2f} ms   min {min(values) * 1e3:7.2f} ms")
    t = {name: statistics.median(values) for name, values in times.items()}
    print(f"alternate's ceiling: 2 x base(1) / (base(2) + module(2)) = "
          f"{2 * t['base, 1 new token'] / (t['base, 2 new tokens'] + t['module, 2 new tokens']):.2f}x")


if __name__ == "__main__":
    main()
