"""On a machine with an NVIDIA GPU, TensorRT 10 or 11 and cuda-python (the extra that
`cli.py build --list-targets` names for this GPU): build both plans for this GPU, check the
runtime's tokens on them against the ONNX Runtime CPU run of the same export, and print
each strategy's decode tokens/s.

    python cli.py export --model build/smollm2 --out build/smollm2-fp16 --dtype float16
    python benchmarks/tensorrt_gpu.py --artifacts build/smollm2-fp16 --precision fp16
    python benchmarks/tensorrt_gpu.py --artifacts build/smollm2-onnx --precision fp32

Each precision builds from the export of its dtype (plans are strongly typed: fp16 needs a
float16 export). A float32 build (TF32 cleared) should give the CPU run's greedy tokens
exactly; fp16 may part ways after a near-tie, so its figure is how many tokens agree before
the first difference. Not run in this repository's CI (no GPU or TensorRT there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engines.build import build  # noqa: E402
from engines.targets import TARGETS  # noqa: E402
from runtime.bench import DEFAULT_PROMPTS, run_bench, table  # noqa: E402
from runtime.cuda import device_properties  # noqa: E402
from runtime.generator import Generator, Request  # noqa: E402

STRATEGIES = ("standard", "alternate", "verify")


def target_for_this_gpu() -> str:
    cc = tuple(device_properties(0)["compute_capability"])
    for name, target in TARGETS.items():
        if cc in target.compute_capabilities:
            return name
    raise SystemExit(f"no preset covers compute capability {cc}; add one to engines/targets.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    target = target_for_this_gpu()
    data = build(args.artifacts, target, args.precision, progress=print)
    engine = f"{data['target']}-{data['precision']}"
    print(f"built {engine} on {data['device']['name']} with TensorRT {data['backend_version']}")

    gpu = Generator.from_artifacts(args.artifacts, engine=engine)
    cpu = Generator.from_artifacts(args.artifacts)
    prompts = [gpu.encode(p, chat=True) for p in DEFAULT_PROMPTS]
    for strategy in STRATEGIES:
        request = Request(strategy, max_new_tokens=args.max_new_tokens)
        same = []
        for ids in prompts:
            a, b = gpu.generate(ids, request).tokens, cpu.generate(ids, request).tokens
            agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            same.append(a == b)
            print(f"{strategy}: {'identical' if a == b else f'first difference at token {agree}'} "
                  f"({len(a)} tokens on {engine}, {len(b)} on the CPU)")
        if args.precision == "fp32" and not all(same):
            raise SystemExit(f"{strategy}: float32 plans must reproduce the CPU tokens")
    print(table(run_bench(gpu, prompts, STRATEGIES, args.max_new_tokens, args.repeats)))


if __name__ == "__main__":
    main()
