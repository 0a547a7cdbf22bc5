"""On a machine with an NVIDIA GPU: build a GPU engine of an export, check the runtime's
tokens on it against the ONNX Runtime CPU run of the same export, and print standard's,
alternate's and verify's decode tokens/s side by side.

TensorRT 10 or 11 and cuda-python (the extra that `cli.py build --list-targets` names for
this GPU): both plans for this GPU's preset.

    python cli.py export --model build/smollm2 --out build/smollm2-fp16 --dtype float16
    python benchmarks/tensorrt_gpu.py --artifacts build/smollm2-fp16 --precision fp16
    python benchmarks/tensorrt_gpu.py --artifacts build/smollm2-onnx --precision fp32

onnxruntime-gpu and no TensorRT (PyPI's onnxruntime-gpu 1.31 is built for CUDA 13 and finds
cuBLAS and cuDNN in the NVIDIA wheels a CUDA build of PyTorch brings): the `ort-cuda` engine,
from the GGUF on.

    python cli.py import-gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --recycler models/smollm2-135m-instruct.recycler.safetensors --out build/smollm2
    python cli.py export --model build/smollm2 --out build/smollm2-fp16 --dtype float16
    python benchmarks/tensorrt_gpu.py --artifacts build/smollm2-fp16 --target ort-cuda

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
from runtime.generator import Generator, Request  # noqa: E402
from runtime.tasks import encode_task_set  # noqa: E402

STRATEGIES = ("standard", "alternate", "verify")


def target_for_this_gpu() -> str:
    from runtime.cuda import device_properties  # cuda-python: TensorRT targets only

    cc = tuple(device_properties(0)["compute_capability"])
    for name, target in TARGETS.items():
        if cc in target.compute_capabilities:
            return name
    raise SystemExit(f"no preset covers compute capability {cc}; add one to engines/targets.py")


def check_engine(artifacts: str, target: str, precision: str | None, max_new_tokens: int, repeats: int,
                 task_set: str | None = "real", per_kind: int = 1, say=print) -> list:
    """Build `target` from the export, compare the runtime's greedy tokens on it with the
    ONNX Runtime CPU run of the same export (identical required at fp32), and bench the three
    strategies on it. Prompts: one per kind of a task set, or the built-in chat prompts
    (task_set None). Returns run_bench's figures."""
    record = build(artifacts, target, precision, progress=say)
    engine = f"{record.target}-{record.precision}"
    say(f"built {engine} on {record.device.get('name')} with {record.backend} {record.backend_version}")
    gpu = Generator.from_artifacts(artifacts, engine=engine)
    cpu = Generator.from_artifacts(artifacts)
    if task_set:
        prompts = encode_task_set(gpu, task_set, per_kind=per_kind, max_new_tokens=max_new_tokens).prompts
    else:
        prompts = [gpu.encode(p, chat=True) for p in DEFAULT_PROMPTS]
    for strategy in STRATEGIES:
        request = Request(strategy, max_new_tokens=max_new_tokens)
        same = []
        for ids in prompts:
            a, b = gpu.generate(ids, request).tokens, cpu.generate(ids, request).tokens
            agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            same.append(a == b)
            say(f"{strategy}: {'identical' if a == b else f'first difference at token {agree}'} "
                f"({len(a)} tokens on {engine}, {len(b)} on the CPU)")
        if record.precision == "fp32" and not all(same):
            raise SystemExit(f"{strategy}: a float32 engine must reproduce the CPU tokens")
    figures = run_bench(gpu, prompts, STRATEGIES, max_new_tokens, repeats)
    say(table(figures))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--target", default=None,
                        help="an engine target (default: this GPU's TensorRT preset); ort-cuda for onnxruntime-gpu")
    parser.add_argument("--precision", default=None, help="default: the target's (TensorRT fp16; ort-cuda as exported)")
    parser.add_argument("--task-set", default="real", help="prompts: one per kind of this task set; 'none': the "
                                                         "built-in chat prompts")
    parser.add_argument("--per-kind", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    check_engine(args.artifacts, args.target or target_for_this_gpu(), args.precision, args.max_new_tokens,
                 args.repeats, None if args.task_set == "none" else args.task_set, args.per_kind)


if __name__ == "__main__":
    main()
