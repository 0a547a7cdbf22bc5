"""Resident memory of a generation against what it has to hold: the engine's weights and the
KV caches.

    python benchmarks/memory.py --artifacts build/smollm2-onnx --engine cpu-int4-sym \
        [--max-new-tokens 128] [--strategy verify]

Run it once per engine (one process each, so nothing of another engine stays resident). It
reports the process's resident set (VmRSS) after importing the runtime (the interpreter and
numpy; onnxruntime comes with the engine), after loading the engine and after one generation
on a real-task prompt, and the peak (VmHWM). Weights are the bytes of the engine's files
(graphs, external data, the shared embedding file); KV is what the generator's caches hold
at their capacity, base and module. The figure of merit is the peak over weights + KV, once
with and once without the import floor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--strategy", default="verify")
    parser.add_argument("--kind", default="rag", help="which real-task prompt (its first of that kind)")
    args = parser.parse_args()

    from runtime.generator import Generator
    from runtime.kv import BASE, MODULE
    from runtime.limits import decode_state_bytes
    from runtime.request import Request
    from runtime.tasks import encode_task_set

    floor = status_mib("VmRSS")
    gen = Generator.from_artifacts(args.artifacts, args.engine)
    loaded = status_mib("VmRSS")
    tasks = encode_task_set(gen, "real", per_kind=1, kinds=(args.kind,), max_new_tokens=args.max_new_tokens)
    result = gen.generate(tasks.prompts[0], Request(args.strategy, max_new_tokens=args.max_new_tokens,
                                                    stop_token_ids=()))
    after, peak = status_mib("VmRSS"), status_mib("VmHWM")

    folder = Path(args.artifacts) / "engines" / args.engine
    weights = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".bin", ".data")) / 2**20
    kv = decode_state_bytes(gen.dims, gen.capacity)[0] / 2**20  # base and module, K and V
    need = weights + kv
    print(f"{args.engine}: {len(tasks.prompts[0])} prompt tokens + {len(result.tokens)} generated ({args.strategy}); "
          f"caches for {gen.capacity} positions ({BASE} and {MODULE})")
    print(f"  resident after import {floor:.0f} MiB, after load {loaded:.0f}, after generating {after:.0f}, "
          f"peak {peak:.0f}")
    print(f"  weights {weights:.0f} MiB + KV {kv:.0f} MiB = {need:.0f} MiB")
    print(f"  peak / (weights + KV) = {peak / need:.2f}; without the import floor {(peak - floor) / need:.2f}")


if __name__ == "__main__":
    main()
