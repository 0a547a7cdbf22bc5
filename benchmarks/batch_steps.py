"""Cost of one continuous-batch step (runtime/batching.py) against the number of rows,
beside one-at-a-time decoding (Generator.stream), in one process: what the server's
aggregate standard throughput can reach once its batch is full.

    python benchmarks/batch_steps.py --artifacts build/smollm2-onnx --engine cpu-fp32 --rows 1,4,16

Every row decodes the same chat prompt (the first built-in prompt of `cli.py bench`); the
steps after a few warm-up ones are timed, rounds interleave the batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.batching import BatchDecoder  # noqa: E402
from runtime.bench import DEFAULT_PROMPTS  # noqa: E402
from runtime.generator import Generator, Request  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--steps", type=int, default=12, help="Timed steps per measurement.")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    generator = Generator.from_artifacts(args.artifacts, args.engine, args.threads)
    ids = generator.encode(DEFAULT_PROMPTS[0], chat=True)
    request = Request(max_new_tokens=args.steps + 8, stop_token_ids=())
    for round_ in range(args.rounds):
        stream = generator.stream(ids, request)
        tokens = iter(stream)
        for _ in range(3):
            next(tokens)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(tokens)
        seconds = (time.perf_counter() - start) / args.steps
        stream.close()
        print(f"round {round_} one at a time: {1e3 * seconds:7.1f} ms/token {1 / seconds:7.1f} tok/s", flush=True)
        for rows in (int(n) for n in args.rows.split(",")):
            decoder = BatchDecoder(generator, rows)
            for _ in range(rows):
                decoder.add(ids, request)
            for _ in range(3):  # the prefills, then two batched steps
                decoder.step()
            start = time.perf_counter()
            for _ in range(args.steps):
                decoder.step()
            seconds = (time.perf_counter() - start) / args.steps
            print(f"round {round_} batch of {rows:>3}: {1e3 * seconds:7.1f} ms/step  {rows / seconds:7.1f} tok/s",
                  flush=True)


if __name__ == "__main__":
    main()
