"""verify's draft configurations side by side on a task set, per kind: how verify's defaults
(runtime.request.DraftOptions) were chosen.

    python benchmarks/verify_drafts.py --artifacts build/smollm2-onnx --engine cpu-fp32 \
        [--task-set real] [--per-kind 2] [--max-new-tokens 64] \
        [--configs "lookup n2 k15,lookup n2 k15 + store,module chain k3 p0"]

Greedy, stop tokens off. For each prompt every configuration runs back to back (standard
first), so drift hits all alike; speed is decoded tokens over decode seconds per kind, and
the speedup is against standard on the same prompts. Also counts the prompts whose verify
tokens differ from standard's: none on float engines; quantized kernels may round a
near-tie differently when a position shares a step with drafts.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.generator import Generator  # noqa: E402
from runtime.request import DraftOptions, Request  # noqa: E402
from runtime.tasks import encode_task_set  # noqa: E402

DEFAULT_CONFIGS = ("lookup n2 k15", "lookup n2 k15 + store", "lookup n3 k15 + store", "lookup n2 k15 + store + module p0.5",
                   "module chain k3 p0", "one module draft")
CONFIG = re.compile(r"(?:lookup n(?P<n>\d+) k(?P<k>\d+)(?P<store> \+ store)?(?: \+ module p(?P<p>[\d.]+))?"
                    r"|module chain k(?P<chain>\d+) p(?P<chain_p>[\d.]+)|(?P<one>one module draft))$")
UNCUT = ", uncut"  # a configuration's name ending so: drafts not cut to the engine's step costs


def parse_config(name: str) -> DraftOptions:
    """A configuration by name: "lookup nN kK" (prompt lookup, suffixes of N tokens or more,
    drafts of up to K), "... + store" (else the export's answer store), "... + module pP"
    (else a module chain gated at P), "module chain kK pP", or "one module draft" (the
    paper's verify); any of them + ", uncut" runs without the engine's step costs
    (runtime.costs). Raises ValueError for another name."""
    match = CONFIG.match(name.strip().removesuffix(UNCUT))
    if match is None:
        raise ValueError(name)
    if match["one"]:
        return DraftOptions(1, 0, True, 0.0, answer_store=False)
    if match["chain"]:
        return DraftOptions(int(match["chain"]), 0, True, float(match["chain_p"]), answer_store=False)
    module = match["p"] is not None
    return DraftOptions(int(match["k"]), int(match["n"]), module, float(match["p"]) if module else 0.5,
                        answer_store=bool(match["store"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--task-set", default="real")
    parser.add_argument("--per-kind", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help='comma-separated configurations, e.g. "lookup n2 k15,lookup n2 k15 + store,'
                             'lookup n2 k3 + store + module p0.5,module chain k3 p0,one module draft"; add ", uncut" to a '
                             'configuration to run it without the engine\'s step costs')
    args = parser.parse_args()
    configs = {}
    for name in re.split(r",(?! uncut)", args.configs):
        try:
            configs[name.strip()] = parse_config(name)
        except ValueError:
            parser.error(f"unknown configuration {name!r}: write \"lookup nN kK\", \"lookup nN kK + module pP\", "
                         f"\"module chain kK pP\" or \"one module draft\"")
    gen = Generator.from_artifacts(args.artifacts, args.engine, args.threads)
    uncut = Generator(gen.backend, gen.artifacts, gen.codec, gen.store)  # the same sessions, no step costs
    tasks = encode_task_set(gen, args.task_set, per_kind=args.per_kind, max_new_tokens=args.max_new_tokens)
    requests = {"standard": Request("standard", max_new_tokens=args.max_new_tokens, stop_token_ids=())}
    requests.update({name: Request("verify", max_new_tokens=args.max_new_tokens, stop_token_ids=(), drafts=d)
                     for name, d in configs.items()})
    gen.generate(tasks.prompts[0], Request(max_new_tokens=4))  # warm-up
    decoded, seconds, steps = (defaultdict(lambda: defaultdict(float)) for _ in range(3))
    differ: dict[str, int] = defaultdict(int)
    for prompt, kind in zip(tasks.prompts, tasks.kinds):
        reference = None
        for name, request in requests.items():
            result = (uncut if name.endswith(UNCUT) else gen).generate(prompt, request)
            reference = result.tokens if reference is None else reference
            differ[name] += result.tokens != reference
            for group in (kind, "overall"):
                decoded[name][group] += result.stats.generated_tokens - 1
                seconds[name][group] += result.stats.decode_seconds
                steps[name][group] += result.stats.base_calls - 1
    groups = list(dict.fromkeys(tasks.kinds)) + ["overall"]
    print(f"{args.engine or 'exported graphs'}, {len(tasks.prompts)} prompts, {args.max_new_tokens} new tokens; "
          "decode tok/s and speedup over standard per kind")
    print("configuration".ljust(28) + "".join(g[:13].rjust(15) for g in groups) + "  tokens/step  differ")
    for name in requests:
        cells = []
        for g in groups:
            speed = decoded[name][g] / seconds[name][g]
            base = decoded["standard"][g] / seconds["standard"][g]
            cells.append((f"{speed:5.0f}" if name == "standard" else f"{speed:5.0f} {speed / base:4.2f}x").rjust(15))
        per_step = decoded[name]["overall"] / max(steps[name]["overall"], 1)
        print(name.ljust(28) + "".join(cells) + f"  {per_step:11.2f}  {differ[name]:6d}")


if __name__ == "__main__":
    main()
